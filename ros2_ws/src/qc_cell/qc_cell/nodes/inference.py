"""inference node: one InspectionResult per PartFrame (inspection/result), the operator's overlay
(inspection/overlay, only while subscribed), the active model (model/active, latched), hot model swap
(inference/load_model) and /diagnostics; a shadow model beside the live one (inference/load_shadow,
inspection/shadow, model/shadow: nodes/inference_shadow.py).

The work happens in qc_cell.inference: frames are enqueued by the subscription callback and scored by the
pipeline's worker thread (bounded queue, explicit NOT_INSPECTED backpressure); model loads are served from their
own thread (qc_cell.ros.service_thread), so a load never stalls the frames and the node itself spins single-threaded.
This module declares parameters and converts messages.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from qc_cell.inference import overlay
from qc_cell.inference.backends import BackendError, BackendOptions, resolve_backend
from qc_cell.inference.hot_swap import ACTIVE, FAILED, LOADING, NONE, ModelManager, ModelState
from qc_cell.inference.model_store import ModelStore, StoreError
from qc_cell.inference.params import INFERENCE
from qc_cell.inference.pipeline import FrameJob, InferencePipeline, Outcome, SequenceGaps
from qc_cell.nodes.inference_shadow import ShadowPort
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.frame_transport import FrameReceiver
from qc_cell.ros.images import array_to_image
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.service_thread import ServiceThread
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import steady_timer, to_ns
from qc_interfaces.msg import Alert, InspectionResult, ModelInfo, PartFrame
from qc_interfaces.srv import LoadModel

STATE_CODES = {
    NONE: ModelInfo.STATE_NONE,
    LOADING: ModelInfo.STATE_LOADING,
    ACTIVE: ModelInfo.STATE_ACTIVE,
    FAILED: ModelInfo.STATE_FAILED,
}


class _ToRosLogger(logging.Handler):
    """Forwards the inference core's Python log records (engine builds, worker errors) to the node's logger."""

    def __init__(self, node: Node) -> None:
        super().__init__(logging.INFO)
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


class InferenceNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("inference", **kwargs)
        p = declare_parameters(self, INFERENCE)
        self._style = overlay.OverlayStyle(
            reinspect_threshold=p["overlay_reinspect_threshold"], defective_threshold=p["overlay_defective_threshold"]
        )
        if self._style.reinspect_threshold > self._style.defective_threshold:
            raise ParameterError("overlay_reinspect_threshold must not exceed overlay_defective_threshold")
        self._deadline_ns = int(p["deadline_ms"] * 1e6)

        try:
            choice = resolve_backend(p["backend"], p["precision"], p["cuda_device"])
        except (BackendError, ValueError) as exc:
            raise ParameterError(str(exc)) from exc
        store, store_dir, engine_cache_dir = None, p["model_store_dir"], p["engine_cache_dir"]
        if store_dir:
            try:
                store = ModelStore(Path(store_dir), keep=p["model_store_keep"])
            except (OSError, StoreError) as exc:
                raise ParameterError(f"model_store_dir {store_dir!r} unusable: {exc}") from exc
        if not engine_cache_dir:
            engine_cache_dir = str(store.engines_dir if store else Path("~/.cache/qc_cell/engines").expanduser())
        options = BackendOptions(
            threads=p["threads"],
            precision=choice.precision,
            max_batch=p["max_batch"],
            engine_cache_dir=engine_cache_dir,
            engine_key_file=p["engine_key_file"],
            workspace_mb=p["tensorrt_workspace_mb"],
            int8_calibration_dir=p["int8_calibration_dir"],
            int8_calibration_images=p["int8_calibration_images"],
            device=p["cuda_device"],
        )
        self.get_logger().info(f"backend: {choice.message}")

        # inspection/result is EVENTS (reliable), matched by decision's subscription; overlay is IMAGE_VIEW for
        # viewers; model/active is LATCHED so a late cloud_bridge/operator sees the serving model at once.
        self._result_pub = self.create_publisher(InspectionResult, "inspection/result", qos.EVENTS)
        self._overlay_pub = self.create_publisher(Image, "inspection/overlay", qos.IMAGE_VIEW)
        # Each scored part's class-activation map (greyscale on the image, part_id set), only while subscribed:
        # cloud_bridge sends it with the part's sample. IMAGE_VIEW: a lost one only means a sample without map.
        self._heatmap_pub = self.create_publisher(PartFrame, "inspection/heatmap", qos.IMAGE_VIEW)
        self._model_pub = self.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        self._alerts = AlertPublisher(self)
        self._diag_pub = diagnostics.create_publisher(self)

        # From here on the node is valid: the core's log goes to the node's logger (removed in destroy_node).
        self._core_log = logging.getLogger("qc_cell.inference")
        self._log_handler = _ToRosLogger(self)
        self._core_log.addHandler(self._log_handler)
        self._core_log.setLevel(logging.INFO)
        self._shadow = ShadowPort(self, p, frames_waiting=lambda: self._pipeline.queue_depth())
        self._pipeline = InferencePipeline(
            self._publish_result,
            queue_size=p["queue_size"],
            max_batch=p["max_batch"],
            overlay_wanted=lambda: self._overlay_pub.get_subscription_count() > 0,
            on_overlay=self._publish_overlay,
            heatmaps_wanted=lambda: self._heatmap_pub.get_subscription_count() > 0,
            on_heatmap=self._publish_heatmap,
            pixels_wanted=self._shadow.runner.wanted,
            after_publish=self._shadow.runner.offer,  # the shadow's turn comes after the live result is out
        )
        self._manager = ModelManager(
            self._pipeline,
            choice,
            options,
            store,
            p["require_golden_set"],
            on_state=self._publish_model_state,
            shadow=self._shadow.runner,
            on_shadow=self._shadow.on_shadow_changed,
        )
        self._sequence = SequenceGaps()
        # Same-host frames come by handle from the camera driver's shared-memory pool (leased here on arrival).
        self._frames = FrameReceiver(self.get_fully_qualified_name(), p["frame_pool"])
        self._last_stats, self._last_lost = self._pipeline.stats(), 0
        self._publish_model_state(self._manager.state)
        self._pipeline.start()
        handle_parameter_changes(self, INFERENCE, self._apply_parameters)

        # PART_FRAMES (reliable) matches camera_driver's publisher: backpressure is ours to report (NOT_INSPECTED),
        # not the middleware's to hide; frames the middleware still loses show up as sequence gaps.
        subscriptions = Subscriptions(self, self._alerts, self._diag_pub)
        subscriptions.create(PartFrame, "camera/frames", self._on_frame, qos.PART_FRAMES)
        self._frames.subscribe(self)  # attach to each pool as soon as the driver announces it
        self._load_service = ServiceThread(self, LoadModel, "inference/load_model", self._on_load_model, "model_loader")
        self._shadow.attach(self._manager)
        steady_timer(self, p["diagnostics_period_s"], self._publish_diagnostics)
        self._initial_load = threading.Thread(
            target=self._load_initial_model, args=(p["model_path"],), name="inference-initial-load", daemon=True
        )
        self._initial_load.start()

    # ---- model --------------------------------------------------------------------------------------
    def _load_initial_model(self, model_path: str) -> None:
        result = self._manager.load_initial(model_path)
        if result.success:
            self.get_logger().info(f"serving {result.message}")
            self._shadow.load_initial()
        else:
            self.get_logger().error(result.message)
            self._alerts.send(Alert.ERROR, "MODEL_LOAD_FAILED", result.message)

    def _on_load_model(self, request: LoadModel.Request, response: LoadModel.Response) -> LoadModel.Response:
        self.get_logger().info(f"inference/load_model: {request.path} (version {request.version or 'any'})")
        result = self._manager.load(request.path, request.version, request.sha256)
        response.success, response.message, response.active_version = (
            result.success,
            result.message,
            result.active_version,
        )
        if result.success:
            self._alerts.send(Alert.INFO, "MODEL_SWAPPED", f"now serving {result.active_version}: {result.message}")
        else:
            self.get_logger().error(result.message)
            self._alerts.send(Alert.WARN, "MODEL_LOAD_FAILED", result.message)
        return response

    def _publish_model_state(self, state: ModelState) -> None:
        msg = ModelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version, msg.sha256, msg.backend, msg.precision = (
            state.version,
            state.sha256,
            state.backend,
            state.precision,
        )
        msg.state = STATE_CODES[state.state]
        msg.message = state.message
        msg.reinspect_threshold, msg.defective_threshold = state.decision_bands or (math.nan, math.nan)
        self._model_pub.publish(msg)

    # ---- frames -------------------------------------------------------------------------------------
    def _on_frame(self, msg: PartFrame) -> None:
        received = time.monotonic_ns()
        lost = self._sequence.observe(msg.sequence)
        if lost:
            self.get_logger().error(
                f"{lost} frame(s) before part {msg.part_id} never arrived (sequence gap; "
                f"{self._sequence.lost} lost in total): the middleware dropped them, the decision fails them safe",
                throttle_duration_sec=2.0,
            )
        expires = None
        if self._deadline_ns > 0:
            # The part's age on the steady clock (a wall-clock step changes no deadline); the wall stamps of a
            # producer without a steady stamp otherwise.
            steady_ns = to_ns(msg.steady_stamp)
            if steady_ns > 0:
                age = max(0, received - steady_ns)
            else:
                capture_ns = to_ns(msg.header.stamp)
                age = max(0, self.get_clock().now().nanoseconds - capture_ns) if capture_ns > 0 else 0
            expires = received + self._deadline_ns - age
        pixels = self._frames.receive(msg)
        self._pipeline.submit(
            FrameJob(
                part_id=msg.part_id,
                received_ns=received,
                decode=pixels.decode,
                verify=pixels.verify,
                release=pixels.release,
                expires_ns=expires,
                context=msg,
                capture_ok=msg.capture_ok,
                capture_error=msg.capture_error,
            )
        )

    def _publish_result(self, outcome: Outcome) -> None:
        """Called from the pipeline's worker (and for immediate NOT_INSPECTED answers, the frame callback)."""
        frame: PartFrame = outcome.job.context
        msg = InspectionResult()
        msg.header = frame.header
        msg.steady_stamp = frame.steady_stamp
        msg.part_id = frame.part_id
        msg.status = InspectionResult.STATUS_OK if outcome.ok else InspectionResult.STATUS_NOT_INSPECTED
        msg.reason = outcome.reason
        msg.defect_probability = outcome.probability if outcome.ok else math.nan
        msg.model_version = outcome.model_version
        msg.backend = outcome.backend
        msg.queue_ms = outcome.queue_ms
        msg.preprocess_ms = outcome.preprocess_ms
        msg.inference_ms = outcome.inference_ms
        msg.ground_truth = frame.ground_truth
        msg.defect_type = frame.defect_type
        stats = outcome.image_stats  # drift statistics (qc_contract.drift), NaN when not computed
        msg.image_brightness, msg.image_contrast = stats.brightness, stats.contrast
        msg.image_sharpness = stats.sharpness
        self._result_pub.publish(msg)
        if not outcome.ok:
            self.get_logger().warning(
                f"part {frame.part_id} NOT_INSPECTED ({outcome.reason}): {outcome.detail}", throttle_duration_sec=2.0
            )

    def _publish_overlay(self, outcome: Outcome) -> None:
        label = outcome.model_version if outcome.ok else outcome.reason
        picture = overlay.render(
            outcome.image,
            outcome.channel_order,
            outcome.ok,
            outcome.probability,
            label,
            outcome.preprocessing,
            outcome.heatmap,
            self._style,
        )
        self._overlay_pub.publish(array_to_image(picture, "bgr8", header=outcome.job.context.header))

    def _publish_heatmap(self, outcome: Outcome) -> None:
        if outcome.preprocessing is None or self._heatmap_pub.get_subscription_count() == 0:
            return
        frame: PartFrame = outcome.job.context
        msg = PartFrame(header=frame.header, part_id=frame.part_id, sequence=frame.sequence, capture_ok=True)
        cam = overlay.heatmap_image(outcome.heatmap, outcome.image.shape[:2], outcome.preprocessing)
        msg.image = array_to_image(cam, "mono8", header=frame.header)
        self._heatmap_pub.publish(msg)

    # ---- parameters, health ---------------------------------------------------------------------------
    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """The deadline and overlay bands together; ValueError refuses the change."""
        if values["overlay_reinspect_threshold"] > values["overlay_defective_threshold"]:
            raise ValueError("overlay_reinspect_threshold must not exceed overlay_defective_threshold")
        self._deadline_ns = int(values["deadline_ms"] * 1e6)
        self._style = overlay.OverlayStyle(
            reinspect_threshold=values["overlay_reinspect_threshold"],
            defective_threshold=values["overlay_defective_threshold"],
        )

    def _publish_diagnostics(self) -> None:
        self._frames.keep_attached()  # the periodic timer also keeps the frame-pool registration fresh
        stats, previous = self._pipeline.stats(), self._last_stats
        lost, lost_before = self._sequence.lost, self._last_lost
        self._last_stats, self._last_lost = stats, lost
        state = self._manager.state
        shed = sum(stats.not_inspected.values()) - sum(previous.not_inspected.values())
        latency = np.percentile(stats.latency_ms, [50, 99]) if stats.latency_ms else (math.nan, math.nan)
        problems = []
        if self._pipeline.model is None and state.state == LOADING:
            # The start-up load is a wait, not a fault (the camera is held back until the model serves).
            level, problems = (
                diagnostics.WARN,
                [f"loading model {state.version}: parts are NOT_INSPECTED until it serves"],
            )
        elif self._pipeline.model is None:
            level, problems = diagnostics.ERROR, ["no model: every part is NOT_INSPECTED"]
        else:
            level = diagnostics.OK
        if state.state == FAILED:
            problems.append(f"last model load failed: {state.message}")
            level = max(level, diagnostics.WARN)
        if lost > lost_before:
            message = f"{lost - lost_before} frame(s) lost before reaching inference (camera/frames sequence gaps)"
            problems.append(message)
            level = max(level, diagnostics.WARN)
            self._alerts.send(Alert.WARN, "FRAMES_LOST", message)
        if shed:
            new = stats.not_inspected - previous.not_inspected
            problems.append(f"{shed} part(s) NOT_INSPECTED since the last report ({dict(new)})")
            level = max(level, diagnostics.WARN)
        values = {
            "model_version": state.version,
            "model_state": state.state,
            "backend": state.backend,
            "precision": state.precision,
            "frames_received": stats.received,
            "results_published": stats.published,
            "inspected": stats.ok,
            **{f"not_inspected_{reason}": count for reason, count in sorted(stats.not_inspected.items())},
            "frames_lost_in_transport": lost,
            "frames_by_handle": self._frames.by_handle,
            "frames_inline": self._frames.inline,
            "frame_pool": self._frames.reader.pool if self._frames.reader is not None else "off",
            "queue_depth": stats.queue_depth,
            "queue_high_water": stats.queue_high_water,
            "batches": stats.batches,
            "largest_batch": stats.largest_batch,
            "models_swapped_in": stats.swaps,
            "latency_p50_ms": f"{latency[0]:.2f}",
            "latency_p99_ms": f"{latency[1]:.2f}",
            **self._shadow.diagnostics(),
        }
        message = "; ".join(problems) or f"serving {state.version} on {state.backend}"
        status = diagnostics.status(f"{self.get_name()}: model", level, message, values)
        diagnostics.publish(self, self._diag_pub, [status])

    def destroy_node(self) -> None:
        self._load_service.close()
        left = self._pipeline.stop()
        self._shadow.close()
        if left:
            self.get_logger().warning(f"{left} queued frame(s) answered NOT_INSPECTED (shutdown)")
        self._frames.close()
        self._core_log.removeHandler(self._log_handler)
        super().destroy_node()


def main() -> int:
    return run(InferenceNode)


if __name__ == "__main__":
    raise SystemExit(main())
