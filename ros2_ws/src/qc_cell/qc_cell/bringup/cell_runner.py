"""Run a whole cell without `ros2 launch`: the same nodes (qc_cell.cell_graph) from the same params file
as launch/inspection_cell.launch.py, each as its own process, supervised and restarted, lifecycle nodes
driven to ACTIVE, live progress on the terminal, clean shutdown on Ctrl-C.

    python -m qc_cell.bringup.cell_runner --params-file params/demo.yaml --namespace cell1

The terminal shows the parts decided (once a second while they flow) and, once per change, what the cell waits
for and each node's fault, from the nodes' /diagnostics and alerts (qc_cell.bringup.cell_status): why no parts
flow, without reading the per-node logs. Ctrl-C or SIGTERM stops the cell cleanly; a second one during that stop
kills the nodes at once (exit status 128 + the signal). A second signal within 0.25 s of the first counts as the
same request: `timeout -s INT` sends its signal to the runner and then to the runner's process group.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from qc_cell.bringup import params_file
from qc_cell.bringup.activator import CellActivator
from qc_cell.bringup.cell_status import StatusLine
from qc_cell.bringup.progress import CellProgress
from qc_cell.bringup.status_listener import CellStatusListener
from qc_cell.bringup.supervisor import ProcessSpec, Supervisor
from qc_cell.cell_graph import NODES, NodeSpec, cell_environment, enclave_arguments
from qc_cell.ros import qos
from qc_cell.ros.node_main import WITHOUT_RCLPY_SIGNAL_HANDLERS, stop_like_ctrl_c
from qc_interfaces.msg import QualityDecision

FLAGS = sorted({spec.enabled_by for spec in NODES if spec.enabled_by})
SIMULATOR_FLAGS = frozenset(spec.enabled_by for spec in NODES if spec.simulator)


def flag_help(flag: str) -> str:
    """What a node flag's values mean (runner option and launch argument alike)."""
    if flag in SIMULATOR_FLAGS:
        return f"{flag}: true (demo params files only)/false; auto = false: a simulator never runs unasked"
    return f"{flag}: true/false; auto = run the node when the params file configures it"


# A second SIGINT/SIGTERM this soon after the first is the same request delivered twice (timeout(1) signals the
# runner, then its process group), not an operator's "stop now".
SAME_SIGNAL_S = 0.25


def enabled_nodes(params: Mapping[str, dict], flags: Mapping[str, bool | None]) -> list[NodeSpec]:
    """Nodes to run: always-on nodes, plus optional ones whose flag is set; an unset flag (auto) defaults to
    whether the params file configures that node (a non-empty section), except for simulators, which run only when
    their flag is explicitly true."""
    chosen = []
    for spec in NODES:
        if spec.enabled_by is None:
            chosen.append(spec)
            continue
        flag = flags.get(spec.enabled_by)
        if flag is None:
            flag = not spec.simulator and bool(params.get(spec.name))
        if flag:
            chosen.append(spec)
    return chosen


class CellRunner:
    def __init__(
        self,
        params_path: str | Path,
        namespace: str = "",
        arguments: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        flags: Mapping[str, bool | None] | None = None,
        run_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
        log_level: str = "info",
        on_event: Callable[[str, str, str], None] | None = None,
        on_status: Callable[[StatusLine], None] | None = None,
    ) -> None:
        merged = params_file.argument_overrides(arguments or {})
        for node, values in (overrides or {}).items():
            merged.setdefault(node, {}).update(values)
        params = params_file.load(params_path, merged)
        if state_dir and not params_file.uses_state_dir(params):
            raise params_file.ParamsFileError(
                f"--state-dir: {params_path} puts no state under {params_file.STATE_DIR} (its paths say where)"
            )
        self.namespace = namespace.strip("/")
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="qc-cell-"))
        # The run's state (model store, outbox, part counter) where the params file says $(var state_dir):
        # a folder of this run unless one is given, so one run's records and model pointer never leak into the next.
        self.state_dir: Path | None = None
        if params_file.uses_state_dir(params):
            self.state_dir = Path(state_dir or self.run_dir / "state").resolve()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            params = params_file.with_state_dir(params, self.state_dir)
        self.nodes = enabled_nodes(params, flags or {})
        params_file.check_demo(params, self.nodes, params_file.is_demo(params_path), params_path)
        params = params_file.with_simulated_inputs(params, self.nodes)
        self.params = params
        self.progress = CellProgress()
        self._on_event = on_event or (lambda name, event, detail: print(f"[runner] {name}: {event} ({detail})"))
        self._on_status = on_status or (lambda line: print(f"[cell] {line.text}", flush=True))
        # The cell's domain id and its confinement to this host (cell_graph.cell_environment, docs/security.md).
        self.environment = cell_environment(self.namespace)
        specs = []
        for spec in self.nodes:
            path = self.run_dir / "params" / f"{spec.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(params_file.node_params_yaml(self.namespace, spec.name, params.get(spec.name, {})))
            argv = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
            argv += ["-r", f"__ns:=/{self.namespace}", "--params-file", str(path), "--log-level", log_level]
            argv += enclave_arguments(self.namespace, spec.name)
            env = {**self.environment, "PYTHONUNBUFFERED": "1"}
            specs.append(ProcessSpec(spec.name, argv, env=env, respawn=spec.respawn))
        self.supervisor = Supervisor(specs, self.run_dir / "logs", on_event=self._on_event)
        self.context = Context()
        self.observer = None
        self.status: CellStatusListener | None = None
        self._executor: SingleThreadedExecutor | None = None
        self._spin_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._signals = _StopSignals(self.supervisor.hurry)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        # Signals are the runner's (see run/stop), not rclpy's: its handlers would shut this context down from a
        # thread of their own, under the activator and the status listener (as for the nodes: ros/node_main.py).
        # The runner's own participant joins the cell's graph as its nodes do: same domain, same confinement.
        os.environ.update({k: v for k, v in self.environment.items() if k != "GLIBC_TUNABLES"})
        rclpy.init(
            args=["--ros-args", *enclave_arguments(self.namespace, "cell_runner")],
            context=self.context,
            **WITHOUT_RCLPY_SIGNAL_HANDLERS,
        )
        self.observer = rclpy.create_node("cell_runner", namespace=f"/{self.namespace}", context=self.context)
        self.observer.create_subscription(QualityDecision, "quality/decision", self._on_decision, qos.EVENTS)
        names = [spec.name for spec in self.nodes]
        self.status = CellStatusListener(self.observer, self.namespace, names, self._on_status)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.observer)
        self._spin_thread = threading.Thread(target=self._spin, name="runner-spin", daemon=True)
        self._spin_thread.start()
        self.supervisor.start()
        activator = CellActivator(
            self.observer, self.namespace, self.nodes, self._on_event, on_waiting=self.status.waiting
        )
        threading.Thread(target=activator.run, args=(self._stopping,), name="activator", daemon=True).start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except Exception:  # a shutdown race ends the spin thread quietly
            if self.context.ok():
                raise

    def tick(self) -> None:
        """Reap and restart children (the activator brings restarted lifecycle nodes back to ACTIVE); status lines
        that became due."""
        self.supervisor.poll()
        if self.status is not None:
            self.status.parts(self.progress.parts)
            self.status.tick()

    def stop(self) -> int:
        """Stop the nodes (SIGINT, then SIGTERM, then SIGKILL), then the runner's own graph. A SIGINT or SIGTERM
        during the stop kills the nodes at once. Returns 0, or 128 + that signal's number when one did."""
        with self._signals.installed(stopping=True):
            self._stopping.set()
            self.supervisor.stop()
            if self._signals.forced:
                print(f"[runner] {signal.Signals(self._signals.forced).name} again: the nodes were killed", flush=True)
            rclpy.try_shutdown(context=self.context)  # also after a start that a signal cut short
            if self._spin_thread is not None:
                self._spin_thread.join(timeout=5)
            if self.observer is not None:
                self.observer.destroy_node()
                self.observer = None
        return 128 + self._signals.forced if self._signals.forced else 0

    def _on_decision(self, msg: QualityDecision) -> None:
        self.progress.add(msg.part_id, msg.verdict, msg.capture_to_decision_ms)

    def run(self, parts: int = 0, duration_s: float = 0.0, progress_every_s: float = 1.0) -> int:
        """Run until Ctrl-C/SIGTERM, `parts` verdicts, or `duration_s`; print progress (every progress_every_s
        while parts are decided) and status changes. Returns an exit code: 0, or 128 + the signal that forced
        the stop."""
        with self._signals.installed():
            started, last_print, printed_parts = time.monotonic(), 0.0, 0
            try:
                self.start()
                while True:
                    self.tick()
                    now = time.monotonic()
                    due = progress_every_s and now - last_print >= progress_every_s
                    if due and self.progress.parts != printed_parts:
                        print(f"[cell] {self.progress.line()}", flush=True)
                        last_print, printed_parts = now, self.progress.parts
                    if (parts and self.progress.parts >= parts) or (duration_s and now - started >= duration_s):
                        break
                    time.sleep(0.1)
            except KeyboardInterrupt:
                name = signal.Signals(self._signals.first).name if self._signals.first else "Ctrl-C"
                print(f"[runner] {name}: stopping the cell (a second Ctrl-C kills the nodes at once)", flush=True)
            finally:
                code = self.stop()
            standing = self.status.status.standing() if self.status is not None else []
            for item in standing:
                print(f"[cell] at stop: {item}", flush=True)
            print(f"[cell] final: {self.progress.line()}; logs in {self.supervisor.log_dir}", flush=True)
            return code


class _StopSignals:
    """SIGINT/SIGTERM handling of the runner, on the main thread: the first signal stops the cell cleanly (raises
    KeyboardInterrupt where the runner is); one during the stop calls `force` (the supervisor kills the nodes at
    once) and is remembered for the exit status. A signal within SAME_SIGNAL_S of the first is taken as the same.
    SIGINT stays ignored when the runner was started with it ignored (a shell's background job)."""

    def __init__(self, force: Callable[[], None]) -> None:
        self._force = force
        self._installed = False
        self.first = 0  # the signal that started the stop (0: none)
        self.forced = 0  # the signal that forced it
        self._stop_at: float | None = None  # when the stop began

    def _handle(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self._stop_at is None:
            self.first, self._stop_at = signum, now
            raise KeyboardInterrupt
        if now - self._stop_at < SAME_SIGNAL_S or self.forced:
            return
        self.forced = signum
        self._force()

    @contextmanager
    def installed(self, stopping: bool = False) -> Iterator[None]:
        """Handle the signals within the block (when on the main thread; nested blocks share the first's
        handlers). stopping=True: the stop is under way, so the next signal forces it."""
        if stopping and self._stop_at is None:
            self._stop_at = time.monotonic()
        if self._installed or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN or sig == signal.SIGTERM:
                signal.signal(sig, self._handle)
        self._installed = True
        try:
            yield
        finally:
            self._installed = False
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _flag(value: str) -> bool | None:
    try:
        return params_file.parse_flag(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Bad command-line input is one line on stderr and exit status 2 (argparse would print the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"[runner] {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", required=True, help="cell params YAML (params/cell.yaml, demo.yaml, ...)")
    parser.add_argument("--namespace", default="", help="cell namespace (one namespace per cell)")
    parser.add_argument("--backend", default="", help="inference backend override: auto, onnxruntime, tensorrt")
    parser.add_argument(
        "--source", default="", help="camera source override: v4l2, gstreamer, video, folder, synthetic"
    )
    for flag in FLAGS:
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            default="auto",
            type=_flag,
            dest=flag,
            help=flag_help(flag),
        )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "fatal"])
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="parameter override")
    parser.add_argument("--run-dir", default=None, help="where per-node params and logs go (default: a temp dir)")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="the run's state folder, $(var state_dir) in the params file: model store, outbox, part counter "
        "(default: <run dir>/state, new for every run)",
    )
    parser.add_argument("--parts", type=int, default=0, help="stop after this many verdicts (0 = run until Ctrl-C)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = params_file.parse_overrides(args.set, params_file.known_parameters(args.params_file))
        runner = CellRunner(
            args.params_file,
            namespace=args.namespace,
            arguments={"backend": args.backend, "source": args.source},
            overrides=overrides,
            flags={flag: getattr(args, flag) for flag in FLAGS},
            run_dir=args.run_dir,
            state_dir=args.state_dir,
            log_level=args.log_level,
        )
    except params_file.ParamsFileError as exc:
        print(f"[runner] {exc}", file=sys.stderr)
        return 2
    print(f"[runner] nodes: {', '.join(s.name for s in runner.nodes)}; logs in {runner.supervisor.log_dir}")
    if runner.state_dir is not None:
        print(f"[runner] state (model store, outbox, part counter) in {runner.state_dir}")
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    return runner.run(parts=args.parts, duration_s=args.duration)


if __name__ == "__main__":
    sys.exit(main())
