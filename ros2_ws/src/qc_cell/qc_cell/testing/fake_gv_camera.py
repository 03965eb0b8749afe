"""Aravis's fake GigE Vision camera (`arv-fake-gv-camera-0.8` from Debian's aravis-tools) for tests: the real
GVCP/GVSP protocol over loopback. A cable pull is `kill()` then `start()`.

The fake camera answers control on UDP 127.0.0.1:3956 (GigE Vision's fixed port), so one runs per machine at a
time: `fake_gv_camera()` holds an exclusive lock file while its camera runs and waits for the port.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

FAKE_CAMERA = "arv-fake-gv-camera-0.8"
ARV_TOOL = "arv-tool-0.8"
GVCP_PORT = 3956
LOCK_FILE = Path("/tmp/qc_cell_fake_gv_camera.lock")


def unavailable_reason() -> str:
    """'' when the fake camera can run here, else why not (for pytest.skip)."""
    if shutil.which(FAKE_CAMERA) is None:
        return f"{FAKE_CAMERA} not installed (Debian package aravis-tools; bash scripts/setup.sh installs it)"
    from qc_cell.camera.sources.aravis import aravis_available

    return aravis_available()


def gvcp_port_free() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", GVCP_PORT))
        except OSError:
            return False
    return True


class FakeGvCamera:
    def __init__(self, serial: str, lost_packets_per_thousand: int = 0, log_dir: Path | None = None) -> None:
        self.serial = serial
        self.lost = lost_packets_per_thousand
        self.log_path = (log_dir or Path("/tmp")) / f"fake_gv_camera_{serial}.log"
        self.process: subprocess.Popen | None = None

    @property
    def camera_id(self) -> str:
        return f"Aravis-Fake-{self.serial}"

    def start(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not gvcp_port_free():  # the previous process's socket (or someone else's camera)
            if time.monotonic() > deadline:
                raise RuntimeError(f"UDP 127.0.0.1:{GVCP_PORT} stays busy: another GigE Vision fake camera runs")
            time.sleep(0.1)
        command = [FAKE_CAMERA, "-i", "127.0.0.1", "-s", self.serial]
        if self.lost:
            command += ["-r", str(self.lost)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        from qc_cell.camera.sources.aravis import list_cameras

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{FAKE_CAMERA} exited with {self.process.returncode}; see {self.log_path}")
            if any(c["serial"] == self.serial for c in list_cameras()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{FAKE_CAMERA} {self.serial} not discovered within {timeout_s} s")

    def kill(self) -> None:
        """The cable pull: the camera vanishes without a word."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def arv_tool(self, *args: str) -> str:
        result = subprocess.run([ARV_TOOL, *args], capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr


@contextlib.contextmanager
def fake_gv_camera(serial: str, lost_packets_per_thousand: int = 0, wait_s: float = 300.0) -> Iterator[FakeGvCamera]:
    LOCK_FILE.touch(exist_ok=True)
    with LOCK_FILE.open("r") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{LOCK_FILE} held for {wait_s} s by another test run") from None
                time.sleep(0.2)
        camera = FakeGvCamera(serial, lost_packets_per_thousand)
        try:
            camera.start()
            yield camera
        finally:
            camera.kill()
