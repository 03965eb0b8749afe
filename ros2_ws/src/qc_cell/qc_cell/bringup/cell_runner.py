"""Run a whole cell without `ros2 launch`: the same nodes (qc_cell.cell_graph) from the same params file
as launch/inspection_cell.launch.py, each as its own process, supervised and restarted, lifecycle nodes
driven to ACTIVE, live progress on the terminal, clean shutdown on Ctrl-C.

    python -m qc_cell.bringup.cell_runner --params-file params/demo.yaml --namespace cell1
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from qc_cell.bringup import params_file
from qc_cell.bringup.activator import CellActivator
from qc_cell.bringup.progress import CellProgress
from qc_cell.bringup.supervisor import ProcessSpec, Supervisor
from qc_cell.cell_graph import ENVIRONMENT, NODES, NodeSpec
from qc_cell.ros import qos
from qc_cell.ros.node_main import stop_like_ctrl_c
from qc_interfaces.msg import QualityDecision

FLAGS = sorted({spec.enabled_by for spec in NODES if spec.enabled_by})


def enabled_nodes(params: Mapping[str, dict], flags: Mapping[str, bool | None]) -> list[NodeSpec]:
    """Nodes to run: always-on nodes, plus optional ones whose flag is set; an unset flag defaults to
    whether the params file configures that node (a non-empty section)."""
    chosen = []
    for spec in NODES:
        if spec.enabled_by is None:
            chosen.append(spec)
            continue
        flag = flags.get(spec.enabled_by)
        if flag if flag is not None else bool(params.get(spec.name)):
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
        self.params = params
        self.progress = CellProgress()
        self._on_event = on_event or (lambda name, event, detail: print(f"[runner] {name}: {event} ({detail})"))
        specs = []
        for spec in self.nodes:
            path = self.run_dir / "params" / f"{spec.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(params_file.node_params_yaml(self.namespace, spec.name, params.get(spec.name, {})))
            argv = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
            argv += ["-r", f"__ns:=/{self.namespace}", "--params-file", str(path), "--log-level", log_level]
            env = {**ENVIRONMENT, "PYTHONUNBUFFERED": "1"}
            specs.append(ProcessSpec(spec.name, argv, env=env, respawn=spec.respawn))
        self.supervisor = Supervisor(specs, self.run_dir / "logs", on_event=self._on_event)
        self.context = Context()
        self.observer = None
        self._executor: SingleThreadedExecutor | None = None
        self._spin_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        rclpy.init(context=self.context)
        self.observer = rclpy.create_node("cell_runner", namespace=f"/{self.namespace}", context=self.context)
        self.observer.create_subscription(QualityDecision, "quality/decision", self._on_decision, qos.EVENTS)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.observer)
        self._spin_thread = threading.Thread(target=self._spin, name="runner-spin", daemon=True)
        self._spin_thread.start()
        self.supervisor.start()
        activator = CellActivator(self.observer, self.namespace, self.nodes, self._on_event)
        threading.Thread(target=activator.run, args=(self._stopping,), name="activator", daemon=True).start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except Exception:  # a shutdown race ends the spin thread quietly
            if self.context.ok():
                raise

    def tick(self) -> None:
        """Reap and restart children (the activator brings restarted lifecycle nodes back to ACTIVE)."""
        self.supervisor.poll()

    def stop(self) -> None:
        self._stopping.set()
        self.supervisor.stop()
        if self.observer is not None:
            rclpy.try_shutdown(context=self.context)
            if self._spin_thread is not None:
                self._spin_thread.join(timeout=5)
            self.observer.destroy_node()
            self.observer = None

    def _on_decision(self, msg: QualityDecision) -> None:
        self.progress.add(msg.part_id, msg.verdict, msg.capture_to_decision_ms)

    def run(self, parts: int = 0, duration_s: float = 0.0, progress_every_s: float = 1.0) -> int:
        """Run until Ctrl-C, `parts` verdicts, or `duration_s`; print progress. Returns an exit code."""
        self.start()
        started, last_print = time.monotonic(), 0.0
        try:
            while True:
                self.tick()
                now = time.monotonic()
                if progress_every_s and now - last_print >= progress_every_s:
                    print(f"[cell] {self.progress.line()}", flush=True)
                    last_print = now
                if (parts and self.progress.parts >= parts) or (duration_s and now - started >= duration_s):
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("[runner] Ctrl-C: shutting the cell down", flush=True)
        finally:
            self.stop()
        print(f"[cell] final: {self.progress.line()}; logs in {self.supervisor.log_dir}", flush=True)
        return 0


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
            help=f"{flag}: true/false; auto = when the params file configures the node",
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
