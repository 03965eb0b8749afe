"""The inference node's shadow model, ROS side (the core is qc_cell.inference.shadow):

- inference/load_shadow (qc_interfaces/LoadModel, the same request as inference/load_model): bring up a store
  version as the shadow; an empty path and version clear the shadow (the operator's way to end a shadow run:
  `ros2 service call inference/load_shadow qc_interfaces/srv/LoadModel "{}"`).
- inspection/shadow (InspectionResult, EVENTS): one per part the shadow scored, after the part's live result;
  model_version = the shadow version, defect_probability = the shadow's score, inference_ms = its time,
  backend = the live model's version ("live:<version>": the model that decided the part).
- model/shadow (ModelInfo, LATCHED): the shadow version ('' = none) and, in `message`, its counts as JSON
  {"scored": n, "skipped_<reason>": n, ...}; on every change of the shadow and every shadow_report_period_s.
"""

from __future__ import annotations

import math

from rclpy.node import Node

from qc_cell.inference.hot_swap import ModelManager
from qc_cell.inference.shadow import ShadowBudget, ShadowRunner, ShadowScore
from qc_cell.inference.shadow_wire import LIVE_PREFIX, format_state
from qc_cell.ros import qos
from qc_cell.ros.service_thread import ServiceThread
from qc_cell.ros.time import from_ns, steady_timer
from qc_interfaces.msg import InspectionResult, ModelInfo, PartFrame
from qc_interfaces.srv import LoadModel


class ShadowPort:
    def __init__(self, node: Node, params: dict, frames_waiting) -> None:
        self._node = node
        self._result_pub = node.create_publisher(InspectionResult, "inspection/shadow", qos.EVENTS)
        self._state_pub = node.create_publisher(ModelInfo, "model/shadow", qos.LATCHED)
        budget = ShadowBudget(params["shadow_spare_fraction"], params["shadow_max_latency_ms"])
        self.runner = ShadowRunner(self._publish_score, frames_waiting, budget)
        self._message = "no shadow model"
        self._last_counts: dict[str, int] | None = None
        self._manager: ModelManager | None = None
        self._service: ServiceThread | None = None
        self._period_s = params["shadow_report_period_s"]

    def attach(self, manager: ModelManager) -> None:
        """After the model manager exists: the service, the periodic report and the latched initial state."""
        self._manager = manager
        self._service = ServiceThread(self._node, LoadModel, "inference/load_shadow", self._on_load, "shadow_loader")
        steady_timer(self._node, self._period_s, self._report_if_changed)
        self.publish_state()

    def on_shadow_changed(self, version: str, message: str) -> None:
        self._message = message
        self.publish_state()

    def _on_load(self, request: LoadModel.Request, response: LoadModel.Response) -> LoadModel.Response:
        self._node.get_logger().info(f"inference/load_shadow: {request.path or request.version or '(clear)'}")
        result = self._manager.load_shadow(request.path, request.version, request.sha256)
        response.success, response.message, response.active_version = (
            result.success,
            result.message,
            result.active_version,
        )
        if not result.success:
            self._node.get_logger().error(result.message)
        return response

    def load_initial(self) -> None:
        result = self._manager.load_initial_shadow() if self._manager is not None else None
        if result is not None and not result.success:
            self._node.get_logger().error(f"recorded shadow model not loaded: {result.message}")

    def _publish_score(self, score: ShadowScore) -> None:
        """From the shadow's thread (rclpy publishers are thread-safe)."""
        frame: PartFrame | None = score.context
        msg = InspectionResult()
        if frame is not None:
            msg.header, msg.steady_stamp = frame.header, frame.steady_stamp
            msg.ground_truth, msg.defect_type = frame.ground_truth, frame.defect_type
        else:
            msg.header.stamp = from_ns(score.stamp_ns)
        msg.part_id = score.part_id
        msg.status = InspectionResult.STATUS_OK
        msg.defect_probability = score.defect_probability
        msg.model_version = score.shadow_version
        msg.backend = LIVE_PREFIX + score.live_version
        msg.inference_ms = score.latency_ms
        self._result_pub.publish(msg)

    def _report_if_changed(self) -> None:
        if self.runner.counts() != self._last_counts:
            self.publish_state()

    def publish_state(self) -> None:
        counts = self.runner.counts()
        self._last_counts = counts
        msg = ModelInfo()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        model = self.runner.model
        msg.version = model.version if model is not None else ""
        msg.sha256 = model.manifest.sha256 if model is not None else ""
        msg.backend = model.backend.name if model is not None else ""
        msg.precision = model.backend.precision if model is not None else ""
        msg.state = ModelInfo.STATE_ACTIVE if model is not None else ModelInfo.STATE_NONE
        msg.message = format_state(counts, self._message)
        msg.reinspect_threshold = msg.defective_threshold = math.nan
        self._state_pub.publish(msg)

    def diagnostics(self) -> dict[str, object]:
        counts = {f"shadow_{k}": v for k, v in self.runner.counts().items()}
        return {"shadow_version": self.runner.version or "none", **counts}

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
        self.runner.stop()
