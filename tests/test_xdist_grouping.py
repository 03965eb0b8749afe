"""The suite's promise that system tests run one at a time on one pytest-xdist worker (conftest.py) holds.

pytest-xdist's `--dist loadgroup` can stop grouping without an error (pytest 9.2 with xdist 3.8, pytest-xdist#1386):
the system tests then run two at once on a 2-core machine and fail by timing. This runs a tiny suite of system-
marked tests under the same options as scripts/run_tests.sh and checks that one worker ran them all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import time
import pytest
pytestmark = pytest.mark.system
@pytest.mark.parametrize("i", range(6))
def test_probe(i):
    time.sleep(0.2)
"""


def test_system_tests_share_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(PROBE)
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:randomly"]
    done = subprocess.run(
        [*command, "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers = re.findall(r"\[(gw\d+)\] \[\s*\d+%\] PASSED", done.stdout)
    assert len(workers) == 6, done.stdout[-3000:]
    assert len(set(workers)) == 1, f"system tests ran on several workers at once: {workers}\n{done.stdout[-2000:]}"
