"""inference node in a real rclpy graph: one result per frame with pass-through fields, every bad input
answered NOT_INSPECTED while the node stays up, backpressure, hot swap through inference/load_model under a
live stream, the latched model/active, restart on the last good model, overlay only while subscribed,
/diagnostics and parameter validation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from qc_cell.inference import overlay
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore
from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_cell.nodes.inference import InferenceNode
from qc_cell.ros import qos
from qc_cell.ros.images import array_to_image, image_to_array
from qc_cell.ros.params import ParameterError
from qc_cell.ros.time import from_ns
from qc_cell.testing.ros import Graph, ros_graph
from qc_contract.model_manifest import DecisionBands, Manifest, Preprocessing
from qc_interfaces.msg import InspectionResult, ModelInfo, PartFrame
from qc_interfaces.srv import LoadModel

SPEC = Preprocessing(input_height=32, input_width=32)
REPO = Path(__file__).resolve().parents[4]


@dataclass
class Cell:
    graph: Graph
    node: InferenceNode
    probe: Node
    results: list[InspectionResult] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    sent: int = 0

    def frame(self, level: int = 128, part_id: str | None = None, stamp_ns: int | None = None, **fields) -> str:
        part_id = part_id or f"part-{self.sent:05d}"
        msg = PartFrame(part_id=part_id, sequence=self.sent, source="test", encoder_count=self.sent, capture_ok=True)
        msg.header.stamp = from_ns(stamp_ns if stamp_ns is not None else self.probe.get_clock().now().nanoseconds)
        msg.header.frame_id = "camera"
        if "image" not in fields:
            msg.image = array_to_image(uniform_image(level), "bgr8", header=msg.header)
        for name, value in fields.items():
            setattr(msg, name, value)
        self.frames_pub.publish(msg)
        self.sent += 1
        return part_id

    def wait_results(self, count: int, timeout: float = 15.0) -> list[InspectionResult]:
        assert self.graph.spin_until(lambda: len(self.results) >= count, timeout), (
            f"expected {count} results, got {len(self.results)}"
        )
        return self.results

    def by_part(self) -> dict[str, InspectionResult]:
        return {r.part_id: r for r in self.results}

    def wait_model(self, state: int, version: str = "", timeout: float = 20.0) -> ModelInfo:
        def seen() -> bool:
            return (
                bool(self.models)
                and self.models[-1].state == state
                and (not version or self.models[-1].version == version)
            )

        assert self.graph.spin_until(seen, timeout), f"model/active never reached state {state} {version}: " + (
            f"last {self.models[-1]}" if self.models else "nothing received"
        )
        return self.models[-1]

    def install(self, package: Path) -> str:
        """The package installed into the node's model store as the cloud_bridge's verified update path does."""
        store = ModelStore(Path(self.node.get_parameter("model_store_dir").value))
        return str(store.install(package, Manifest.load(package), ORIGIN_UPDATE, "test"))

    def load(self, path: str, version: str = "", sha256: str = "", timeout: float = 30.0) -> LoadModel.Response:
        client = self.probe.create_client(LoadModel, "inference/load_model")
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(LoadModel.Request(path=path, version=version, sha256=sha256))
        assert self.graph.spin_until(future.done, timeout), "load_model did not answer"
        return future.result()


@contextmanager
def inference_cell(tmp_path, model_path: str | None = None, **params) -> Iterator[Cell]:
    if model_path is None:
        write_package(tmp_path / "v1", "1.0.0", gain=2.0)
        model_path = str(tmp_path / "v1")
    values = {
        "model_path": model_path,
        "model_store_dir": str(tmp_path / "store"),
        "backend": "onnxruntime",
        "threads": 1,
        "deadline_ms": 0.0,  # tests on a busy machine: only the deadline tests use one
        **params,
    }
    with ros_graph() as graph:
        overrides = [Parameter(name, value=value) for name, value in values.items()]
        node = graph.add(InferenceNode(context=graph.context, parameter_overrides=overrides))
        probe = graph.node("probe")
        cell = Cell(graph, node, probe)
        cell.frames_pub = probe.create_publisher(PartFrame, "camera/frames", qos.PART_FRAMES)
        probe.create_subscription(InspectionResult, "inspection/result", cell.results.append, qos.EVENTS)
        probe.create_subscription(ModelInfo, "model/active", cell.models.append, qos.LATCHED)
        assert graph.spin_until(lambda: node.count_subscribers("inspection/result") > 0, 5.0)
        assert graph.spin_until(lambda: node.count_publishers("camera/frames") > 0, 5.0)
        yield cell


def test_one_result_per_frame_with_scores_timings_and_pass_through(tmp_path):
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        levels = [0, 60, 128, 190, 255, 90]
        sent = [
            cell.frame(
                level,
                ground_truth=PartFrame.LABEL_DEFECT if level > 150 else PartFrame.LABEL_GOOD,
                defect_type="contamination" if level > 150 else "",
            )
            for level in levels
        ]
        cell.wait_results(len(levels))
        results = cell.by_part()
        assert sorted(results) == sorted(sent) and len(cell.results) == len(levels)
        for part_id, level in zip(sent, levels, strict=True):
            r = results[part_id]
            assert r.status == InspectionResult.STATUS_OK and r.reason == ""
            assert r.defect_probability == pytest.approx(expected_probability(uniform_image(level), SPEC), abs=1e-5)
            assert (r.model_version, r.backend, r.header.frame_id) == ("1.0.0", "onnxruntime", "camera")
            assert r.queue_ms >= 0 and r.preprocess_ms > 0 and r.inference_ms > 0
            assert r.ground_truth == (PartFrame.LABEL_DEFECT if level > 150 else PartFrame.LABEL_GOOD)
            assert r.defect_type == ("contamination" if level > 150 else "")
            # Drift statistics of the frame (qc_contract.drift): a uniform grey image has no contrast or edges.
            assert r.image_brightness == pytest.approx(level, abs=0.5) and r.image_contrast == pytest.approx(0, abs=0.5)
            assert r.image_sharpness == pytest.approx(0, abs=0.01)


def test_every_bad_input_is_not_inspected_and_the_node_stays_up(tmp_path):
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        good = array_to_image(uniform_image(100), "bgr8")
        cell.frame(part_id="capture_failed", capture_ok=False, capture_error="trigger timeout", image=Image())
        cell.frame(part_id="empty", image=Image(encoding="bgr8"))
        cell.frame(part_id="yuv", image=Image(encoding="yuv422", height=4, width=4, step=8, data=bytes(32)))
        truncated = array_to_image(uniform_image(100), "bgr8")
        truncated.data = bytes(truncated.data)[: len(truncated.data) // 2]
        cell.frame(part_id="truncated", image=truncated)
        cell.frame(part_id="float_pixels", image=array_to_image(np.zeros((8, 8), np.float32), "32FC1"))
        cell.frame(part_id="mono8", image=array_to_image(uniform_image(100, channels=1), "mono8"))
        cell.frame(part_id="rgb8", image=array_to_image(uniform_image(100)[:, :, ::-1].copy(), "rgb8"))
        cell.frame(part_id="after", image=good)
        cell.wait_results(8)
        r = cell.by_part()
        assert (r["capture_failed"].reason, r["empty"].reason) == ("capture_failed", "bad_image")
        assert (r["yuv"].reason, r["truncated"].reason, r["float_pixels"].reason) == ("bad_image",) * 3
        for part in ("capture_failed", "empty", "yuv", "truncated", "float_pixels"):
            assert r[part].status == InspectionResult.STATUS_NOT_INSPECTED and math.isnan(r[part].defect_probability)
        expected = expected_probability(uniform_image(100), SPEC)
        for part in ("mono8", "rgb8", "after"):  # the same grey level through three encodings
            assert r[part].status == InspectionResult.STATUS_OK
            assert r[part].defect_probability == pytest.approx(expected, abs=1e-5)
        stats = cell.node._pipeline.stats()
        assert stats.not_inspected == {"capture_failed": 1, "bad_image": 4} and stats.ok == 3


def test_parts_past_the_deadline_are_not_inspected(tmp_path):
    with inference_cell(tmp_path, deadline_ms=300.0) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        now = cell.probe.get_clock().now().nanoseconds
        cell.frame(part_id="stale", stamp_ns=now - 5_000_000_000)  # captured 5 s ago
        cell.frame(part_id="fresh")
        cell.wait_results(2)
        r = cell.by_part()
        assert r["stale"].status == InspectionResult.STATUS_NOT_INSPECTED and r["stale"].reason == "deadline"
        assert r["fresh"].status == InspectionResult.STATUS_OK


def test_backpressure_answers_every_frame(tmp_path):
    # A model with a 512x512 input makes scoring much slower than the burst of small frames arriving.
    write_package(tmp_path / "slow", "slow.1", input_hw=(512, 512))
    with inference_cell(tmp_path, model_path=str(tmp_path / "slow"), queue_size=2) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        sent = []
        for _ in range(2):  # bursts of 20: within the middleware's queue (depth 30), far beyond ours (2)
            sent += [cell.frame(128) for _ in range(20)]
            cell.wait_results(len(sent), timeout=30)
        reasons = [r.reason for r in cell.results]
        assert sorted(r.part_id for r in cell.results) == sorted(sent)  # every part answered, once
        assert reasons.count("queue_full") >= 1 and reasons.count("") >= 2, reasons
        assert set(reasons) <= {"", "queue_full"}
        assert cell.node._pipeline.stats().not_inspected["queue_full"] == reasons.count("queue_full")


def test_no_model_then_load_through_the_service(tmp_path):
    bands = DecisionBands(0.25, 0.75, True, "validation split (test)")
    write_package(tmp_path / "v1", "1.0.0", manifest_overrides={"decision_bands": bands})
    with inference_cell(tmp_path, model_path="") as cell:
        info = cell.wait_model(ModelInfo.STATE_NONE)
        assert "model_path is empty" in info.message
        assert math.isnan(info.reinspect_threshold) and math.isnan(info.defective_threshold)
        cell.frame(part_id="before")
        cell.wait_results(1)
        assert cell.results[0].reason == "no_model"
        outside = cell.load(str(tmp_path / "v1"), "1.0.0")  # any local path: refused (issue 18)
        assert not outside.success and "is not a package in the model store" in outside.message, outside.message
        response = cell.load(cell.install(tmp_path / "v1"), "1.0.0")
        assert response.success and response.active_version == "1.0.0", response.message
        info = cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        # The package's proposed bands travel with model/active (the decision node's bands: from_model).
        assert (info.reinspect_threshold, info.defective_threshold) == pytest.approx((0.25, 0.75))
        cell.frame(part_id="after")
        cell.wait_results(2)
        assert cell.by_part()["after"].status == InspectionResult.STATUS_OK


def test_hot_swap_under_a_live_stream(tmp_path):
    write_package(tmp_path / "v2", "2.0.0", gain=-2.0)  # opposite scores: a part scored by the wrong model shows
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        client = cell.probe.create_client(LoadModel, "inference/load_model")
        assert client.wait_for_service(timeout_sec=5.0)
        future, total, v2 = None, 150, cell.install(tmp_path / "v2")
        for i in range(total):
            cell.frame(170)
            if i == 30:
                future = client.call_async(LoadModel.Request(path=v2))
            cell.graph.spin_for(0.02)
        assert cell.graph.spin_until(future.done, 30) and future.result().success, future.result()
        last = cell.frame(170)  # reveals frames the middleware lost at the end of the stream
        node = cell.node
        assert cell.graph.spin_until(
            lambda: last in {r.part_id for r in cell.results} and len(cell.results) == node._pipeline.stats().received,
            30,
        )
        cell.graph.spin_for(0.3)
        results, received = cell.results, node._pipeline.stats().received
        ids = [r.part_id for r in results]
        # Count in == count out: every frame that reached the node got exactly one result; a frame the
        # middleware dropped under load (rare, machine-load dependent) is counted, never silent.
        assert len(ids) == len(set(ids)) == received
        assert received + node._sequence.lost == total + 1, (received, node._sequence.lost)
        assert all(r.status == InspectionResult.STATUS_OK for r in results), {r.reason for r in results}
        expected = {
            "1.0.0": expected_probability(uniform_image(170), SPEC, gain=2.0),
            "2.0.0": expected_probability(uniform_image(170), SPEC, gain=-2.0),
        }
        for r in results:
            assert r.defect_probability == pytest.approx(expected[r.model_version], abs=1e-5)
        versions = [r.model_version for r in sorted(results, key=lambda r: r.part_id)]
        switch = versions.index("2.0.0")
        assert set(versions[:switch]) == {"1.0.0"} and set(versions[switch:]) == {"2.0.0"}  # one clean switch
        assert switch > 0
        states = [m.state for m in cell.models]
        assert ModelInfo.STATE_LOADING in states and cell.models[-1].version == "2.0.0"
        # Latched: a subscriber joining now still learns which model serves.
        late: list[ModelInfo] = []
        cell.probe.create_subscription(ModelInfo, "model/active", late.append, qos.LATCHED)
        assert cell.graph.spin_until(lambda: bool(late), 5.0)
        assert (late[-1].state, late[-1].version, late[-1].backend) == (ModelInfo.STATE_ACTIVE, "2.0.0", "onnxruntime")


def test_failed_load_keeps_the_old_model_and_says_why(tmp_path):
    write_package(tmp_path / "bad", "9.0.0")
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        bad = cell.install(tmp_path / "bad")
        (Path(bad) / "model.onnx").write_bytes(b"truncated")  # the store's copy damaged after its install
        response = cell.load(bad)
        assert not response.success and response.active_version == "1.0.0"
        assert "bytes, manifest says" in response.message and "1.0.0 keeps serving" in response.message
        info = cell.wait_model(ModelInfo.STATE_FAILED)
        assert info.version == "1.0.0" and "bytes, manifest says" in info.message
        cell.frame(200)
        assert cell.wait_results(1)[0].model_version == "1.0.0"


def test_restart_comes_back_on_the_last_good_model(tmp_path):
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        assert cell.load(cell.install(tmp_path / "v2")).success
    with inference_cell(tmp_path, model_path=str(tmp_path / "v1")) as restarted:  # same store, same params
        restarted.wait_model(ModelInfo.STATE_ACTIVE, "2.0.0")


def test_overlay_only_while_subscribed(tmp_path):
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        published = []
        original = cell.node._overlay_pub.publish
        cell.node._overlay_pub.publish = lambda msg: (published.append(msg), original(msg))
        cell.frame(200)
        cell.wait_results(1)
        assert published == []  # nobody watching: no overlay rendered or sent
        overlays: list[Image] = []
        cell.probe.create_subscription(Image, "inspection/overlay", overlays.append, qos.IMAGE_VIEW)
        assert cell.graph.spin_until(lambda: cell.node._overlay_pub.get_subscription_count() > 0, 5.0)
        image = uniform_image(60)
        image[:, 40:] = 250  # bright (suspicious) right side: the heatmap should light up there
        cell.frame(part_id="watched", image=array_to_image(image, "bgr8"))
        assert cell.graph.spin_until(lambda: bool(overlays), 10.0), "no overlay while subscribed"
        picture = image_to_array(overlays[-1])
        assert overlays[-1].encoding == "bgr8" and picture.shape == image.shape
        p = expected_probability(image, SPEC)
        assert 0.5 <= p < 0.8 and tuple(picture[24, 0]) == overlay.AMBER  # border: re-inspect colour
        below_text = picture[28:40].astype(int)
        assert np.abs(below_text[:, 8:24] - 60).max() == 0  # dark side: no evidence, picture unchanged
        assert np.abs(below_text[:, 44:56] - 250).max() > 30  # bright side: the class-activation heatmap


def test_each_scored_part_gets_its_heatmap_on_inspection_heatmap_only_while_subscribed(tmp_path):
    """What cloud_bridge sends with a sample: the CAM on the image (mono8), tagged with the part id."""
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        heatmaps: list[PartFrame] = []
        cell.probe.create_subscription(PartFrame, "inspection/heatmap", heatmaps.append, qos.IMAGE_VIEW)
        assert cell.graph.spin_until(lambda: cell.node._heatmap_pub.get_subscription_count() > 0, 5.0)
        image = uniform_image(60)
        image[:, 40:] = 250
        for part_id in ("h1", "h2"):
            cell.frame(part_id=part_id, image=array_to_image(image, "bgr8"))
        assert cell.graph.spin_until(lambda: len(heatmaps) >= 2, 10.0), "no heatmaps while subscribed"
        assert [h.part_id for h in heatmaps] == ["h1", "h2"]
        heat = image_to_array(heatmaps[-1].image)
        assert heatmaps[-1].image.encoding == "mono8" and heat.shape[:2] == image.shape[:2]
        assert heat[:, 44:56].mean() > heat[:, 8:24].mean() + 30  # the bright side is where the model looked


def test_diagnostics_report_model_and_counts(tmp_path):
    with inference_cell(tmp_path, diagnostics_period_s=0.2) as cell:
        arrays: list[DiagnosticArray] = []
        cell.probe.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, qos.DIAGNOSTICS)
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        cell.frame(100)
        cell.frame(part_id="bad", image=Image(encoding="bgr8"))
        cell.wait_results(2)

        def reported() -> dict[str, str] | None:
            for array in reversed(arrays):
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if status.name == "inference: model" and values.get("results_published") == "2":
                        return values
            return None

        assert cell.graph.spin_until(lambda: reported() is not None, 5.0)
        values = reported()
        assert values["model_version"] == "1.0.0" and values["backend"] == "onnxruntime"
        assert values["inspected"] == "1" and values["not_inspected_bad_image"] == "1"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backend": "cuda"}, "must be one of"),
        ({"precision": "fp16"}, "runs fp32 only"),
        ({"overlay_reinspect_threshold": 0.9}, "must not exceed"),
        ({"queue_size": 0}, "queue_size"),
    ],
)
def test_bad_parameters_fail_fast(tmp_path, params, message):
    values = {"backend": "onnxruntime", **params}
    with ros_graph() as graph, pytest.raises(ParameterError, match=message):
        InferenceNode(context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def test_runtime_parameters_are_validated(tmp_path):
    with inference_cell(tmp_path) as cell:
        client = cell.probe.create_client(SetParameters, "inference/set_parameters")
        assert client.wait_for_service(timeout_sec=5.0)

        def set_params(**values) -> list[bool]:
            request = SetParameters.Request(
                parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
            )
            future = client.call_async(request)
            assert cell.graph.spin_until(future.done, 5.0)
            return [r.successful for r in future.result().results]

        assert set_params(deadline_ms=250.0) == [True] and cell.node._deadline_ns == 250_000_000
        assert set_params(overlay_reinspect_threshold=0.95) == [False]
        assert set_params(backend="tensorrt") == [False]  # read-only


@pytest.mark.parametrize("params_file", ["cell.yaml", "jetson.yaml", "demo.yaml"])
def test_shipped_params_files_declare_only_known_valid_parameters(tmp_path, params_file):
    """Every key of the inference section is a declared parameter and passes start-up validation (paths and,
    where this machine has no GPU, backend/precision replaced)."""
    from qc_cell.bringup import params_file as params_io

    section = params_io.load(REPO / "params" / params_file)["inference"]
    local = {"model_path": "", "model_store_dir": str(tmp_path / "store"), "engine_cache_dir": ""}
    if section["backend"] == "tensorrt":
        local.update(backend="onnxruntime", precision="fp32")
    values = {**section, **{k: v for k, v in local.items() if k in section}}
    with ros_graph() as graph:
        node = InferenceNode(
            context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
        )
        try:
            for name, value in values.items():
                assert node.has_parameter(name), f"{params_file}: '{name}' is not a parameter of the node"
                assert node.get_parameter(name).value == value
        finally:
            node.destroy_node()
