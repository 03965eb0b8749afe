"""Health check of one running cell, from its /diagnostics: the containers' HEALTHCHECK.

    python3 -m qc_cell.healthcheck --namespace cell1            # exit 0 healthy, 1 unhealthy

Listens to /diagnostics for up to `--window` seconds. Healthy (exit 0) when every node the cell runs has
reported, and each of its statuses is OK or WARN with a header stamp no older than `--max-age`. Unhealthy
(exit 1) on any ERROR or STALE status, a node that said nothing, an old stamp, or nothing at all. Docker
reserves exit code 2, so configuration errors are exit 1 as well, with the reason printed.

Which nodes: by default the ones the launch file starts for the same params file and use_* flags (the
images' entrypoint hands over what it launched with; otherwise QC_PARAMS_FILE, QC_NAMESPACE, QC_USE_* are
read from the environment), or `--nodes a,b`.

Which statuses are the cell's: the part of a status name before the first ':' must be the node's fully
qualified name (/cell1/inference), the same without the leading slash, or the plain node name
(`inference`, as diagnostic_updater writes "inference: task"). A sub-name after '/' is allowed
(/cell1/inference/backend). Plain names cannot tell two cells apart, so two cells on one ROS domain
should name their statuses with the namespace (or use one ROS_DOMAIN_ID per cell).

The rules (status ownership, health) are plain Python, tested without ROS; listen() and the command line
(which reads the node list of qc_cell.bringup.cell_runner) import rclpy when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from qc_cell.bringup.params_file import fully_qualified

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
NS_PER_S = 1_000_000_000

DEFAULT_WINDOW_S = 5.0
DEFAULT_MAX_AGE_S = 10.0
# Listen at least this long before stopping early, so a node that publishes its statuses in more than one
# array per period (1 Hz is usual) is heard in full.
DEFAULT_SETTLE_S = 1.5


@dataclass(frozen=True)
class StatusSample:
    """One DiagnosticStatus as received, with the header stamp of the array that carried it."""

    name: str
    level: int
    message: str
    stamp_ns: int


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    lines: tuple[str, ...]  # problems first, then one line per status

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def report(self) -> str:
        return "\n".join(self.lines)


def level_of(raw: bytes | bytearray | int) -> int:
    """DiagnosticStatus.level is a `byte` field: rclpy gives a 1-byte bytes object (or an int)."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) != 1:
            raise ValueError(f"diagnostic level must be one byte, got {raw!r}")
        return raw[0]
    return int(raw)


def owner(status_name: str, namespace: str, nodes: Iterable[str]) -> str | None:
    """The node of this cell a status belongs to, or None (another cell's, or a foreign publisher's)."""
    head = status_name.split(":", 1)[0].strip()
    for node in nodes:
        fqn = fully_qualified(namespace, node)
        for candidate in (fqn, fqn.lstrip("/"), node):
            if head == candidate or head.startswith(candidate + "/"):
                return node
    return None


def heard_from_all(samples: Iterable[StatusSample], namespace: str, nodes: Sequence[str]) -> bool:
    heard = {owner(s.name, namespace, nodes) for s in samples}
    return all(node in heard for node in nodes)


def evaluate(
    samples: Iterable[StatusSample],
    namespace: str,
    nodes: Sequence[str],
    now_ns: int,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> Verdict:
    """Health of the cell from the statuses received (in arrival order; the latest per name counts)."""
    if not nodes:
        return Verdict(False, ("UNHEALTHY: no nodes to check (empty node list)",))
    latest: dict[str, StatusSample] = {}
    for sample in samples:
        latest[sample.name] = sample
    by_node: dict[str, list[StatusSample]] = {node: [] for node in nodes}
    ignored = 0
    for sample in latest.values():
        node = owner(sample.name, namespace, nodes)
        if node is None:
            ignored += 1
        else:
            by_node[node].append(sample)

    problems: list[str] = []
    details: list[str] = []
    for node in nodes:
        fqn = fully_qualified(namespace, node)
        if not by_node[node]:
            problems.append(f"{fqn}: no status on /diagnostics")
            continue
        for sample in sorted(by_node[node], key=lambda s: s.name):
            level = LEVEL_NAMES.get(sample.level, f"level {sample.level}")
            age_s = (now_ns - sample.stamp_ns) / NS_PER_S
            line = f"{sample.name!r} {level} age {age_s:.1f} s: {sample.message}"
            if sample.level not in (OK, WARN):
                problems.append(f"{fqn}: {line}")
            elif abs(age_s) > max_age_s:
                problems.append(f"{fqn}: {line} (stamp more than {max_age_s:g} s off the clock)")
            else:
                details.append(f"{fqn}: {line}")

    counted = sum(len(v) for v in by_node.values())
    summary = f"{len(nodes)} node(s), {counted} status(es) of this cell, {ignored} other status(es) ignored"
    if problems:
        return Verdict(False, (f"UNHEALTHY: {len(problems)} problem(s); {summary}", *problems, *details))
    return Verdict(True, (f"HEALTHY: {summary}", *details))


# -- ROS side ---------------------------------------------------------------------------------------------
def listen(
    window_s: float,
    done: Callable[[list[StatusSample]], bool] | None = None,
    settle_s: float = DEFAULT_SETTLE_S,
) -> tuple[list[StatusSample], int]:
    """Collect /diagnostics statuses for up to window_s (or until done(samples) after settle_s).

    Returns the samples in arrival order and the ROS clock's time at the end, in ns. Runs in its own
    Context, so it can be called from a process that has its own rclpy graph.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from qc_cell.ros import qos
    from qc_cell.ros.time import to_ns

    samples: list[StatusSample] = []

    def on_array(msg: DiagnosticArray) -> None:
        stamp_ns = to_ns(msg.header.stamp)
        samples.extend(StatusSample(s.name, level_of(s.level), s.message, stamp_ns) for s in msg.status)

    context = Context()
    rclpy.init(args=[], context=context)
    node = None
    try:
        node = rclpy.create_node(
            f"qc_healthcheck_{os.getpid()}", context=context, start_parameter_services=False, enable_rosout=False
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", on_array, qos.DIAGNOSTICS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < window_s:
            if done is not None and elapsed >= settle_s and done(samples):
                break
            executor.spin_once(timeout_sec=min(0.1, window_s - elapsed))
        return samples, node.get_clock().now().nanoseconds
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def _flag(value: str) -> bool | None:
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or auto, got {value!r}")


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    from qc_cell.bringup.cell_runner import FLAGS

    parser = argparse.ArgumentParser(
        prog="python3 -m qc_cell.healthcheck",
        description="Exit 0 when the cell's /diagnostics statuses are OK/WARN and fresh, 1 otherwise.",
    )
    parser.add_argument("--namespace", default=env.get("QC_NAMESPACE", ""), help="cell namespace [QC_NAMESPACE]")
    parser.add_argument(
        "--nodes",
        default=env.get("QC_HEALTH_NODES", ""),
        help="comma-separated node names to require [QC_HEALTH_NODES]; default: the nodes the launch file "
        "starts for --params-file and the use_* flags",
    )
    parser.add_argument(
        "--params-file", default=env.get("QC_PARAMS_FILE", ""), help="the cell's params file [QC_PARAMS_FILE]"
    )
    for flag in FLAGS:
        variable = f"QC_{flag.upper()}"
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=_flag,
            default=env.get(variable, "auto"),  # argparse converts string defaults with type=, errors included
            help=f"true/false/auto, as given to the launch file [{variable}]",
        )
    parser.add_argument(
        "--window",
        type=_positive,
        default=env.get("QC_HEALTH_WINDOW_S", str(DEFAULT_WINDOW_S)),
        help="seconds to listen at most [QC_HEALTH_WINDOW_S]",
    )
    parser.add_argument(
        "--max-age",
        type=_positive,
        default=env.get("QC_HEALTH_MAX_AGE_S", str(DEFAULT_MAX_AGE_S)),
        help="oldest acceptable status stamp, seconds [QC_HEALTH_MAX_AGE_S]",
    )
    return parser


def expected_nodes(args: argparse.Namespace) -> list[str]:
    """The nodes to require: --nodes, or what the launch file starts for this params file and flags."""
    from qc_cell.bringup import params_file
    from qc_cell.bringup.cell_runner import FLAGS, enabled_nodes
    from qc_cell.cell_graph import NODES

    if args.nodes.strip():
        names = [name.strip() for name in args.nodes.split(",") if name.strip()]
        unknown = sorted(set(names) - {spec.name for spec in NODES})
        if unknown:
            raise ValueError(f"unknown node(s) {unknown}; the cell's nodes are {[s.name for s in NODES]}")
        return names
    params = params_file.load(args.params_file) if args.params_file else {}
    return [spec.name for spec in enabled_nodes(params, {flag: getattr(args, flag) for flag in FLAGS})]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        nodes = expected_nodes(args)
    except SystemExit as exc:  # argparse: --help is 0; a usage error must not become Docker's reserved 2
        return 0 if exc.code == 0 else 1
    except ValueError as exc:  # unknown node in --nodes, missing or malformed params file
        print(f"UNHEALTHY: configuration error: {exc}", flush=True)
        return 1
    namespace = args.namespace.strip("/")
    samples, now_ns = listen(args.window, done=lambda got: heard_from_all(got, namespace, nodes))
    verdict = evaluate(samples, namespace, nodes, now_ns, args.max_age)
    print(verdict.report(), flush=True)
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
