"""Model updates through the cloud_bridge node, end to end: `qc_cloud publish-model` signs and publishes,
the node verifies and calls inference/load_model, and reports on model/status. Attacks arrive over MQTT and
are rejected with their reason; 1,000 malformed inbound payloads leave the node up and counted.

The LoadModel server here is the service contract in a few lines (it checks the package like the inference
node does); test_update_goes_live_in_the_real_inference_node uses the real inference node."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter

from qc_cell.bringup.local_broker import Mosquitto, Subscriber
from qc_cell.inference.model_store import ModelStore, StoreError
from qc_cell.inference.synthetic_models import write_package
from qc_cell.nodes.cloud_bridge import CloudBridgeNode
from qc_cell.ros import qos
from qc_cell.testing.ros import Graph, ros_graph
from qc_cloud import cli
from qc_contract.model_manifest import Manifest, ManifestError
from qc_interfaces.msg import Alert, ModelInfo, QualityDecision
from qc_interfaces.srv import LoadModel

PREFIX = "qc/plant1/line2/cell3/"
CELL_ARGS = ["--site", "plant1", "--line", "line2", "--cell", "cell3"]


def passphrase_args(tmp: Path) -> list[str]:
    return ["--passphrase-file", str(tmp / "passphrase")]


@dataclass
class UpdateCell:
    graph: Graph
    node: CloudBridgeNode
    broker: Mosquitto
    cloud: Subscriber
    key: Path
    tmp: Path
    loads: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    health: dict = field(default_factory=dict)

    def publish_model(self, version: str, *extra: str) -> int:
        """`qc_cloud publish-model` in a thread while this thread spins the ROS graph."""
        write_package(self.tmp / f"pkg-{version}", version)
        argv = ["publish-model", str(self.tmp / f"pkg-{version}"), "--key", str(self.key), "--broker",
                self.broker.url, *CELL_ARGS, "--wait", "30", *passphrase_args(self.tmp), *extra]  # fmt: skip
        if "--chunks" not in extra:
            argv += ["--artifact-dir", str(self.tmp / "artifacts")]
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(cli.main(argv)))
        worker.start()
        assert self.graph.spin_until(lambda: not worker.is_alive(), 60.0), "publish-model did not finish"
        return result[0]

    def statuses(self, event: str) -> list[dict]:
        return [r for r in self.cloud.records("/model/status") if r["event"] == event]


class ContractLoadModel:
    """inference/load_model as the inference node's contract states it: check the package (manifest, model
    hash, expected version and sha256) and the model store's policy, then serve it, move the store's active
    pointer and latch the new state on model/active."""

    def __init__(self, graph: Graph, loads: list[str], store: ModelStore) -> None:
        self.node = graph.node("inference")
        self.loads = loads
        self.store = store
        self.active = ""
        self.model_pub = self.node.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        self.node.create_service(LoadModel, "inference/load_model", self._on_load)

    def _on_load(self, request: LoadModel.Request, response: LoadModel.Response) -> LoadModel.Response:
        try:
            manifest = Manifest.load(Path(request.path))
            manifest.verify_model_file(Path(request.path))
            if request.version and request.version != manifest.version:
                raise ManifestError(f"version {manifest.version} != requested {request.version}")
            if request.sha256 and request.sha256 != manifest.sha256:
                raise ManifestError("sha256 does not match the request")
            if not self.store.contains(Path(request.path)):
                raise ManifestError(f"{request.path} is not a package in the model store")
            self.store.check_activation(manifest.version, manifest.sha256)
        except (ManifestError, StoreError) as exc:
            response.success, response.message, response.active_version = False, str(exc), self.active
            return response
        self.store.activate(manifest)
        self.loads.append(manifest.version)
        self.active = manifest.version
        self.model_pub.publish(
            ModelInfo(version=manifest.version, sha256=manifest.sha256, state=ModelInfo.STATE_ACTIVE)
        )
        response.success, response.message, response.active_version = True, f"serving {manifest.version}", self.active
        return response


@contextmanager
def update_cell(tmp_path: Path, real_inference=None, **params) -> Iterator[UpdateCell]:
    (tmp_path / "passphrase").write_text("correct horse battery staple\n")
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "keys"), *passphrase_args(tmp_path)]) == 0
    values = {
        "broker_url": "",
        "outbox_path": str(tmp_path / "outbox.sqlite3"),
        "site": "plant1",
        "line": "line2",
        "cell": "cell3",
        "updates_enabled": True,
        "update_public_keys": str(tmp_path / "keys" / "model-signing.pub"),
        "update_dir": str(tmp_path / "updates"),
        "update_url_schemes": ["file"],  # publish-model --artifact-dir writes file:// URLs
        "model_store_dir": str(tmp_path / "store"),  # params files derive it from inference.model_store_dir
        "reconnect_max_s": 1,
        "diagnostics_period_s": 0.2,
        **params,
    }
    with Mosquitto() as broker:
        values["broker_url"] = broker.url
        cloud = Subscriber("127.0.0.1", broker.port)
        try:
            with ros_graph() as graph:
                node = graph.add(
                    CloudBridgeNode(
                        context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
                    )
                )
                cell = UpdateCell(graph, node, broker, cloud, tmp_path / "keys" / "model-signing.key", tmp_path)
                if real_inference is None:
                    ContractLoadModel(graph, cell.loads, ModelStore(tmp_path / "store"))
                else:
                    graph.add(real_inference(graph.context))
                probe = graph.node("probe")
                probe.create_subscription(Alert, "alerts", cell.alerts.append, qos.EVENTS)

                def on_diagnostics(msg: DiagnosticArray) -> None:
                    for status in msg.status:
                        if status.name == "cloud_bridge: mqtt":
                            cell.health = {kv.key: kv.value for kv in status.values}

                probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.DIAGNOSTICS)
                cell.decisions = probe.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
                assert graph.spin_until(lambda: cell.health.get("connected") == "True", 10.0), cell.health
                yield cell
        finally:
            cloud.close()


def test_signed_update_goes_live_through_load_model_and_is_reported(tmp_path):
    with update_cell(tmp_path) as cell:
        assert cell.publish_model("1.1.0") == 0, "publish-model --wait must see update_accepted"
        assert cell.loads == ["1.1.0"]
        accepted = cell.statuses("update_accepted")
        assert accepted[-1]["version"] == "1.1.0" and accepted[-1]["active_version"] == "1.1.0"
        assert cell.graph.spin_until(
            lambda: any(s["active_version"] == "1.1.0" for s in cell.statuses("model_state")), 5
        )
        assert cell.graph.spin_until(lambda: any(a.code == "MODEL_UPDATE_ACCEPTED" for a in cell.alerts), 5)
        # The same update in chunks over MQTT (no HTTP/file access needed at the edge).
        assert cell.publish_model("1.2.0", "--chunks", "--chunk-size", "2048") == 0
        assert cell.loads == ["1.1.0", "1.2.0"]
        # An older model, properly signed, is a downgrade: refused, reported, never loaded.
        assert cell.publish_model("1.0.5") == 1
        rejected = cell.statuses("update_rejected")[-1]
        assert (rejected["version"], rejected["reason"], rejected["active_version"]) == ("1.0.5", "downgrade", "1.2.0")
        assert cell.loads == ["1.1.0", "1.2.0"]
        assert cell.graph.spin_until(lambda: any(a.code == "MODEL_UPDATE_REJECTED" for a in cell.alerts), 5)
        assert cell.graph.spin_until(lambda: cell.health.get("update_downgrade") == "1", 5), cell.health


def test_a_spoofed_model_active_does_not_order_updates(tmp_path):
    """Issue 18: any participant could publish model/active; a spoofed '999' made a genuine signed 3.0.0 fail
    as `downgrade`. The bridge now orders versions by the model store's active pointer."""
    with update_cell(tmp_path) as cell:
        spoofer = cell.graph.node("spoofer").create_publisher(ModelInfo, "model/active", qos.LATCHED)
        spoofer.publish(ModelInfo(version="999", sha256="0" * 64, state=ModelInfo.STATE_ACTIVE))
        assert cell.graph.spin_until(
            lambda: any(s["active_version"] == "999" for s in cell.statuses("model_state")), 10
        ), "the bridge reports what it hears (model/status), it just does not order updates by it"
        assert cell.publish_model("3.0.0") == 0, cell.statuses("update_rejected")
        assert cell.loads == ["3.0.0"]


def test_tampered_manifest_over_mqtt_is_rejected_with_its_reason(tmp_path):
    with update_cell(tmp_path) as cell:
        write_package(tmp_path / "pkg", "2.0.0")
        argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(cell.key), *CELL_ARGS, "--dry-run",
                *passphrase_args(tmp_path), "--artifact-dir", str(tmp_path / "artifacts"),
                "--manifest-out", str(tmp_path / "m.json")]  # fmt: skip
        assert cli.main(argv) == 0
        manifest = json.loads((tmp_path / "m.json").read_text())
        manifest["version"] = "9.0.0"  # the attacker wants another version installed
        cell.cloud.publish(PREFIX + "model/update", json.dumps(manifest).encode())
        assert cell.graph.spin_until(lambda: cell.statuses("update_rejected"), 10.0)
        assert cell.statuses("update_rejected")[0]["reason"] == "bad_signature"
        assert cell.loads == [] and not (tmp_path / "updates" / "9.0.0").exists()


def _fuzz_payloads(rng: random.Random, valid: dict) -> list[tuple[str, bytes]]:
    text = json.dumps(valid)
    makers = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))),
        lambda: text[: rng.randrange(1, len(text))].encode(),
        lambda: text.replace(rng.choice(list(valid)), rng.choice(["", "x", "schema_version", "💥"]), 1).encode(),
        lambda: json.dumps(
            {**valid, rng.choice(list(valid)): rng.choice([None, 1e308, -1, [], {}, "x" * 300])}
        ).encode(),
        lambda: json.dumps({**valid, f"extra{rng.randrange(9)}": 1}).encode(),
        lambda: json.dumps({**valid, "schema_version": rng.choice([0, 2, "1", None])}).encode(),
        lambda: ("[" * rng.randrange(1000, 5000)).encode(),
        lambda: json.dumps(rng.choice([[], 1, "s", None, True])).encode(),
        lambda: b'{"a": NaN, "b": Infinity}',
        lambda: b"x" * rng.choice([16_385, 70_000]),
    ]
    topics = [PREFIX + "model/update", PREFIX + "verify/response", PREFIX + "model/chunk/1.0/0"]
    return [(rng.choice(topics), rng.choice(makers)()) for _ in range(1000)]


def test_fuzzing_1000_malformed_inbound_payloads_leaves_the_node_up(tmp_path):
    with update_cell(tmp_path, offload_enabled=True) as cell:
        valid = {"schema_version": 1, "type": "verify_response", "part_id": "p", "request_id": "r", "verdict": "NORMAL"}
        payloads = _fuzz_payloads(random.Random(20240501), valid)
        for topic, payload in payloads:
            cell.cloud.client.publish(topic, payload, qos=1)

        def rejected() -> int:
            return sum(int(v) for k, v in cell.health.items() if k.startswith(("inbound_rejected_", "update_")))

        assert cell.graph.spin_until(lambda: rejected() >= 1000, 60.0), cell.health
        assert rejected() == 1000, f"each payload rejected exactly once: {cell.health}"
        assert int(cell.health.get("rejection_reports_suppressed", 0)) > 0, "a flood is not mirrored back at the cloud"
        # Still up and working: a part summary goes out, and a good update is still accepted.
        cell.decisions.publish(QualityDecision(part_id="after-fuzz"))
        assert cell.graph.spin_until(lambda: any(r["part_id"] == "after-fuzz" for r in cell.cloud.records("/part")), 10)
        assert cell.publish_model("3.0.0") == 0 and cell.loads == ["3.0.0"]


def _real_inference_factory(tmp_path: Path):
    try:
        from qc_cell.nodes.inference import InferenceNode
    except Exception as exc:  # the inference node is another issue's work; skip only when it cannot load
        pytest.skip(f"qc_cell.nodes.inference not importable here: {type(exc).__name__}: {exc}")
    write_package(tmp_path / "initial", "1.0.0")

    def make(context):
        overrides = {"model_path": str(tmp_path / "initial"), "model_store_dir": str(tmp_path / "store"),
                     "backend": "onnxruntime", "threads": 1}  # fmt: skip
        return InferenceNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])

    return make


def test_update_goes_live_in_the_real_inference_node(tmp_path):
    factory = _real_inference_factory(tmp_path)
    with update_cell(tmp_path, real_inference=factory) as cell:
        assert cell.graph.spin_until(lambda: any(s.get("state") == "ACTIVE" for s in cell.statuses("model_state")), 30)
        assert cell.publish_model("1.1.0") == 0
        assert cell.graph.spin_until(
            lambda: any(
                s["active_version"] == "1.1.0" and s["state"] == "ACTIVE" for s in cell.statuses("model_state")
            ),
            30,
        ), cell.statuses("model_state")
