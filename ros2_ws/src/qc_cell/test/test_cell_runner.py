"""The cell runner as a user starts it: `python -m qc_cell.bringup.cell_runner --params-file ...` from another
folder, with the production params (params/cell.yaml) on a machine where the model, the broker and the PLC are not
there. The console must say why no parts flow, once, and stop cleanly on Ctrl-C; a second Ctrl-C during the stop
kills the nodes at once, without a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from qc_cell.bringup import params_file

REPO = Path(__file__).resolve().parents[4]
CELL_PARAMS = REPO / "params" / "cell.yaml"
SMALL_CELL = ["--use-process-sim", "false", "--use-arm-sim", "false"]


def _refused_port() -> int:
    """A local TCP port nothing listens on (the PLC that refuses the connection)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cell_params(folder: Path, changes: dict[str, dict], *, demo: bool = False) -> Path:
    """params/cell.yaml with `changes` on top, written into `folder`; `demo`: it says `demo: true` (may simulate)."""
    params = params_file.load(CELL_PARAMS)
    for node, values in changes.items():
        params[node].update(values)
    path = folder / "cell.yaml"
    path.write_text(params_file.to_yaml(params, demo=demo))  # derived parameters left out: they follow their source
    return path


class _Runner:
    """The runner in its own process group (as in a terminal, where Ctrl-C reaches the whole foreground group);
    its console read line by line."""

    def __init__(self, folder: Path, params: Path, *options: str) -> None:
        env = {**os.environ, "HOME": str(folder), "XDG_STATE_HOME": str(folder / "state")}  # no state outside
        argv = [sys.executable, "-m", "qc_cell.bringup.cell_runner", "--params-file", str(params), *options]
        argv += ["--run-dir", str(folder / "run")]
        self.process = subprocess.Popen(
            argv,
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = next((line for line in list(self.lines) if predicate(line)), None)
            if found is not None or self.process.poll() is not None:
                return found
            time.sleep(0.1)
        return None

    def signal_group(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def node_pids(self) -> dict[str, int]:
        """Node name -> pid, from the runner's "[runner] inference: started (pid 123)" lines."""
        started = [line.removeprefix("[runner] ") for line in self.lines if ": started (pid " in line]
        return {name: int(pid.rstrip(")")) for name, pid in (line.split(": started (pid ") for line in started)}

    def kill(self) -> None:
        nodes = list(self.node_pids().values())
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)  # its nodes die with it (parent-death signal) ...
        for pid in nodes:  # ... but a stopped one (SIGSTOP) would only act on it once continued: a stopped orphan
            with contextlib.suppress(ProcessLookupError):  # keeps its DDS shared-memory ports locked machine-wide
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        return "\n".join(self.lines)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_console_says_why_no_parts_flow_once_and_a_timeout_style_double_sigint_still_stops_cleanly(tmp_path):
    params = _cell_params(
        tmp_path,
        {
            "camera_driver": {"device": str(tmp_path / "no-camera")},
            "inference": {"model_path": "models/default", "model_store_dir": ""},  # relative: no model here
            "reject_actuator": {"modbus_host": "127.0.0.1", "modbus_port": _refused_port()},
            "cloud_bridge": {"broker_url": "mqtts://qc-no-such-broker.invalid:8883"},
        },
    )
    runner = _Runner(tmp_path, params, *SMALL_CELL)
    try:
        reasons = {
            "no model": lambda line: line.startswith("[cell] inference: model: ERROR no model"),
            "camera held back": lambda line: (
                line.startswith("[cell] waiting for inference to serve a model")
                and "camera_driver held back" in line
                and "does not exist" in line
            ),
            "PLC refused": lambda line: (
                line.startswith("[cell] reject_actuator: actuator: ERROR") and "not connected" in line
            ),
            "broker unknown": lambda line: (
                line.startswith("[cell] cloud_bridge: mqtt: WARN not connected") and "qc-no-such-broker.invalid" in line
            ),
        }
        for reason, seen in reasons.items():
            assert runner.wait_for(seen, timeout=120.0), f"{reason!r} not on the console:\n{runner.output()}"
        time.sleep(3.0)  # three more rounds of /diagnostics: none of it is said again
        for reason, seen in reasons.items():
            assert sum(map(seen, runner.lines)) == 1, f"{reason!r} said more than once:\n{runner.output()}"
        assert not any(line.startswith("[cell] parts=") for line in runner.lines), "no part: no progress line"

        # timeout(1) -s INT signals the runner and then its whole group: the same request twice, at once.
        runner.signal_group(signal.SIGINT)
        runner.signal_group(signal.SIGINT)
        code = runner.finish(timeout=60.0)
        output = runner.output()
        assert code == 0, f"a clean stop exits 0, got {code}:\n{output}"
        assert "Traceback" not in output and "terminate called" not in output, output
        assert runner.lines[-1].startswith("[cell] final: parts=0"), output
        assert any(line.startswith("[cell] at stop: inference: model: ERROR") for line in runner.lines), output
    finally:
        runner.kill()


def test_a_second_ctrl_c_during_the_stop_kills_the_nodes_at_once_without_a_traceback(tmp_path):
    params = _cell_params(
        tmp_path,
        {
            "camera_driver": {"source": "synthetic", "width": 320, "height": 240},
            "inference": {"model_path": str(REPO / "models" / "default"), "model_store_dir": ""},
            "reject_actuator": {"driver": "sim"},
        },
        demo=True,  # synthetic camera and sim ejector: simulated equipment
    )
    runner = _Runner(tmp_path, params, *SMALL_CELL, "--use-bridge", "false")
    try:
        assert runner.wait_for(lambda line: "camera_driver: active" in line, timeout=120.0), runner.output()
        nodes = list(runner.node_pids().values())
        hung = runner.node_pids()["inference"]
        os.kill(hung, signal.SIGSTOP)  # a node that does not stop: why an operator presses Ctrl-C again
        runner.signal_group(signal.SIGINT)
        assert runner.wait_for(lambda line: "SIGINT: stopping the cell" in line, timeout=10.0), runner.output()
        time.sleep(0.5)  # past the window in which a second signal counts as the same request
        assert _alive(hung), "precondition: the hung node is still there"
        runner.signal_group(signal.SIGINT)
        sent = time.monotonic()
        code = runner.finish(timeout=30.0)
        output = runner.output()
        assert code == 128 + signal.SIGINT, f"a forced stop exits 130, got {code}:\n{output}"
        assert time.monotonic() - sent < 5.0, "not killed at once (the clean stop would wait 10 s for the hung node)"
        assert "SIGINT again: the nodes were killed" in output, output
        assert "Traceback" not in output and "terminate called" not in output, output
        assert not any(map(_alive, nodes)), f"nodes left running: {[pid for pid in nodes if _alive(pid)]}"
    finally:
        runner.kill()
