"""The cell_manager node (what `ros2 launch` runs besides the cell's nodes) on a real graph: it logs, once per
change, what the cell waits for and each node's fault, from /diagnostics and model/active."""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter

from qc_cell.bringup.cell_status import StatusLine
from qc_cell.nodes.cell_manager import CellManager
from qc_cell.ros import diagnostics, qos
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import ModelInfo

NAMESPACE = "cell_manager_test"
NO_MODEL = "no model: models/default: package directory models/default does not exist"


class _Recording(CellManager):
    """The cell_manager, with the lines it logs kept for the test."""

    def __init__(self, **kwargs) -> None:
        self.lines: list[StatusLine] = []
        super().__init__(**kwargs)

    def _on_status(self, line: StatusLine) -> None:
        self.lines.append(line)
        super()._on_status(line)


def test_the_cell_manager_logs_the_wait_for_the_model_and_the_fault_once_each():
    with ros_graph() as graph:
        inference = graph.node("inference", namespace=NAMESPACE)  # stands in for the inference node
        diag_pub = inference.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)
        model_pub = inference.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        model_pub.publish(ModelInfo(state=ModelInfo.STATE_FAILED, message=NO_MODEL))
        manager = graph.add(
            _Recording(
                namespace=NAMESPACE,
                context=graph.context,
                parameter_overrides=[
                    Parameter("nodes", value=["inference"]),
                    Parameter("ready_timeout_s", value=120.0),
                ],
            )
        )

        def report(level: int, message: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                diagnostics.publish(inference, diag_pub, [diagnostics.status("inference: model", level, message, {})])
                graph.spin_for(0.5)

        texts = lambda: [line.text for line in manager.lines]  # noqa: E731
        wait = f"waiting for inference to serve a model: {NO_MODEL}"
        report(diagnostics.ERROR, "no model: every part is NOT_INSPECTED", 1.0)
        assert graph.spin_until(lambda: wait in texts(), timeout=30.0), texts()
        report(diagnostics.ERROR, "no model: every part is NOT_INSPECTED", 3.0)
        assert texts() == ["inference: model: ERROR no model: every part is NOT_INSPECTED", wait], "once each"

        model_pub.publish(ModelInfo(state=ModelInfo.STATE_ACTIVE, version="v1"))
        report(diagnostics.OK, "serving v1 on onnxruntime", 8.0)
        assert graph.spin_until(lambda: len(manager.lines) == 4, timeout=10.0), texts()
        assert texts()[2].startswith("stopped waiting after ") and texts()[2].endswith("for inference to serve a model")
        assert texts()[3] == "inference: model: OK again (serving v1 on onnxruntime)"
