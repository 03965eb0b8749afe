"""The health check against a real rclpy graph: a publisher sends DiagnosticArray on /diagnostics (with the
helpers every node uses) while `python -m qc_cell.healthcheck` runs as its own process, exactly as the
container's HEALTHCHECK runs it."""

from __future__ import annotations

import subprocess
import sys

from qc_cell.healthcheck import ERROR, OK, WARN
from qc_cell.ros import diagnostics
from qc_cell.testing.ros import ros_graph

NODES = "camera_driver,inference"


def run_check(statuses: list[tuple[str, int, str]], *args: str, window_s: float = 10.0) -> tuple[int, str]:
    """Publish `statuses` at 5 Hz while the health check runs; return its exit code and output.

    Levels are ints (0 OK .. 3 STALE), which is what diagnostics.status() takes.
    """
    with ros_graph() as graph:
        node = graph.node("fake_cell")
        publisher = diagnostics.create_publisher(node)
        if statuses:
            node.create_timer(
                0.2,
                lambda: diagnostics.publish(
                    node, publisher, [diagnostics.status(name, level, text, {"k": 1}) for name, level, text in statuses]
                ),
            )
        check = subprocess.Popen(
            [sys.executable, "-m", "qc_cell.healthcheck", "--window", str(window_s), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            graph.spin_until(lambda: check.poll() is not None, timeout=window_s + 60)
        finally:
            if check.poll() is None:
                check.kill()
        output = check.communicate(timeout=10)[0]
    return check.returncode, output


def test_ok_and_warn_statuses_are_healthy():
    code, output = run_check(
        [
            ("/cell7/camera_driver", OK, "30.0 fps"),
            ("/cell7/inference", WARN, "queue 80% full"),
            ("/cell9/inference", ERROR, "another cell"),
        ],
        "--namespace",
        "cell7",
        "--nodes",
        NODES,
    )
    assert code == 0, output
    assert output.startswith("HEALTHY: 2 node(s), 2 status(es) of this cell, 1 other status(es) ignored"), output
    assert "/cell7/inference: '/cell7/inference' WARN" in output


def test_an_error_status_is_unhealthy_and_named():
    code, output = run_check(
        [("camera_driver: capture", OK, "30.0 fps"), ("inference: model", ERROR, "no model")],
        "--nodes",
        NODES,
    )
    assert code == 1, output
    assert output.startswith("UNHEALTHY: 1 problem(s)"), output
    assert "/inference: 'inference: model' ERROR" in output and "no model" in output


def test_silence_is_unhealthy():
    code, output = run_check([], "--namespace", "cell7", "--nodes", NODES, window_s=3.0)
    assert code == 1, output
    assert "/cell7/camera_driver: no status on /diagnostics" in output
    assert "/cell7/inference: no status on /diagnostics" in output
