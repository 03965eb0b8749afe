"""Shadow runs with real processes' parts: the real inference node and cloud_bridge node in one ROS graph, a real
mosquitto, and `qc_cloud publish-model --shadow` signing and publishing. The shadow update is verified and
installed, the shadow scores parts in spare time and its scores reach MQTT (shadow records), the live results
stay the live model's, a burst makes it skip parts and count why (model/status shadow_state), and publishing the
same package as live promotes it from the model store without a download."""

from __future__ import annotations

import pytest
from rclpy.parameter import Parameter
from test_model_update_node import update_cell

from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_cell.ros import qos
from qc_cell.ros.images import array_to_image
from qc_cell.ros.time import from_ns
from qc_contract.model_manifest import Manifest
from qc_interfaces.msg import InspectionResult, PartFrame


def _inference_factory(tmp_path):
    from qc_cell.nodes.inference import InferenceNode

    write_package(tmp_path / "initial", "1.0.0")

    def make(context):
        overrides = {"model_path": str(tmp_path / "initial"), "model_store_dir": str(tmp_path / "store"),
                     "backend": "onnxruntime", "threads": 1, "queue_size": 64, "deadline_ms": 0.0,
                     "shadow_report_period_s": 0.5}  # fmt: skip
        return InferenceNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])

    return make


def test_shadow_update_scores_beside_the_live_model_and_is_promoted_from_the_store(tmp_path):
    with update_cell(tmp_path, real_inference=_inference_factory(tmp_path)) as cell:
        graph = cell.graph
        assert graph.spin_until(lambda: any(s.get("state") == "ACTIVE" for s in cell.statuses("model_state")), 30)
        probe = graph.node("shadow_probe")
        results: list[InspectionResult] = []
        probe.create_subscription(InspectionResult, "inspection/result", results.append, qos.EVENTS)
        frames = probe.create_publisher(PartFrame, "camera/frames", qos.PART_FRAMES)
        assert graph.spin_until(lambda: probe.count_subscribers("camera/frames") > 0, 10)

        assert cell.publish_model("1.1.0", "--shadow") == 0, "publish-model --wait must see update_accepted"
        accepted = [s for s in cell.statuses("update_accepted") if s["version"] == "1.1.0"]
        assert accepted and accepted[-1]["role"] == "shadow" and accepted[-1]["active_version"] == "1.0.0"
        assert graph.spin_until(
            lambda: any(s.get("shadow_version") == "1.1.0" for s in cell.statuses("shadow_state")), 20
        ), cell.statuses("shadow_state")

        sent = 0

        def send(level: int) -> None:
            nonlocal sent
            msg = PartFrame(part_id=f"part-{sent:04d}", sequence=sent, source="test", capture_ok=True)
            msg.header.stamp = from_ns(probe.get_clock().now().nanoseconds)
            msg.image = array_to_image(uniform_image(level), "bgr8", header=msg.header)
            frames.publish(msg)
            sent += 1

        # A slow line: one part at a time, time to spare. Every part gets its shadow score on MQTT.
        for i in range(5):
            send(40 + 40 * i)
            assert graph.spin_until(lambda i=i: len(results) > i, 15)
            assert graph.spin_until(lambda i=i: len(cell.cloud.records("/shadow")) > i, 15), i
        scores = cell.cloud.records("/shadow")
        assert [s["part_id"] for s in scores] == [f"part-{i:04d}" for i in range(5)]
        assert {(s["shadow_version"], s["live_version"]) for s in scores} == {("1.1.0", "1.0.0")}
        spec = Manifest.load(tmp_path / "initial").preprocessing
        expected = [expected_probability(uniform_image(40 + 40 * i), spec) for i in range(5)]
        assert [s["defect_probability"] for s in scores] == pytest.approx(expected, abs=1e-3)
        # The live results are the live model's, unchanged.
        assert {r.model_version for r in results} == {"1.0.0"}
        assert [r.defect_probability for r in results] == pytest.approx(expected, abs=1e-3)

        # A burst: frames wait for the live model, so the shadow skips parts and says why.
        for i in range(40):  # in groups below the frame topic's history (30), so the middleware loses none
            send(100 + i)
            if i % 10 == 9:
                graph.spin_until(lambda i=i: len(results) >= i - 4, 5)
        assert graph.spin_until(lambda: len(results) == 45, 60), len(results)
        assert all(r.status == InspectionResult.STATUS_OK and r.model_version == "1.0.0" for r in results)

        def skipped() -> int:
            states = [s for s in cell.statuses("shadow_state") if s["shadow_version"] == "1.1.0"]
            counts = states[-1]["shadow_counts"] if states else {}
            return sum(v for k, v in counts.items() if k.startswith("skipped_")) if counts else 0

        assert graph.spin_until(lambda: skipped() > 0, 20), cell.statuses("shadow_state")[-1:]
        counts = [s for s in cell.statuses("shadow_state") if s["shadow_version"] == "1.1.0"][-1]["shadow_counts"]
        assert counts.get("scored", 0) + skipped() <= 45 and counts.get("scored", 0) >= 5, counts

        # Promotion: the same package published live. The cell takes its stored copy (no download).
        assert cell.publish_model("1.1.0") == 0
        assert cell.node._link.updater.counts["from_store"] == 1
        assert graph.spin_until(
            lambda: any(
                s["active_version"] == "1.1.0" and s["state"] == "ACTIVE" for s in cell.statuses("model_state")
            ),
            30,
        )
        assert graph.spin_until(lambda: any(s["shadow_version"] == "" for s in cell.statuses("shadow_state")), 20), (
            cell.statuses("shadow_state")[-1:]
        )
        before = len(results)
        send(90)
        assert graph.spin_until(lambda: len(results) > before, 15)
        assert results[-1].model_version == "1.1.0"
