"""The cloud link's policy through its facade, without ROS: duplicate recovery of replayed verdicts, image samples,
re-inspection offload and the cloud's answers, update report rate limit, loss alerts, health. The records are read
back from the real outbox file; a link that is not started sends nothing, so what it stored is what it decided.
Time is a hand-driven clock, so rates and deadlines are exact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from qc_cell.bridge.cloud_link import CloudLink
from qc_cell.bridge.inputs import Clock, ModelReport, PartImage, PartVerdict, ProcessReport, RejectReport
from qc_cell.bridge.model_updater import UpdateSettings
from qc_cell.bridge.outbox import OutboxLimits
from qc_cell.bridge.outputs import CloudVerdict, HealthLevel, LinkAlert
from qc_cell.bridge.settings import CloudLinkSettings, OffloadSettings, SampleSettings, simulated_inputs
from qc_cell.bringup.local_broker import Mosquitto
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore
from qc_cell.inference.synthetic_models import write_package
from qc_contract import records, schemas
from qc_contract.broker import BridgeConfigError, broker_config
from qc_contract.topics import CellId

CELL = CellId("plant1", "line2", "cell3")
NORMAL, REINSPECT, DEFECTIVE = 0, 1, 2
MS, S = 1_000_000, 1_000_000_000
T0 = 1_700_000_000 * S  # wall clock when the link starts


@dataclass
class HandClock:
    wall: int = T0
    mono: int = 1000 * S

    def advance(self, ns: int) -> None:
        self.wall += ns
        self.mono += ns

    def clock(self) -> Clock:
        return Clock(wall_ns=lambda: self.wall, monotonic_ns=lambda: self.mono)


@dataclass
class Link:
    core: CloudLink
    time: HandClock
    alerts: list[LinkAlert] = field(default_factory=list)
    verdicts: list[CloudVerdict] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)

    def stored(self, stream: str) -> list[dict]:
        """The records of one stream in the outbox, oldest first."""
        return [json.loads(e.payload) for e in self.core.bridge.outbox.pending(0, 100_000) if e.stream == stream]

    def health(self) -> dict:
        return self.core.health().values


def settings(tmp_path: Path, broker_url: str = "mqtt://127.0.0.1:1", **changes) -> CloudLinkSettings:
    base = CloudLinkSettings(
        cell=CELL,
        broker=broker_config(broker_url, "test-link", reconnect_max_s=1),
        outbox_path=str(tmp_path / "outbox.sqlite3"),
    )
    return replace(base, **changes)


@contextmanager
def cloud_link(tmp_path: Path, clock: HandClock | None = None, load_model=None, **changes) -> Iterator[Link]:
    clock = clock or HandClock()
    alerts: list[LinkAlert] = []
    verdicts: list[CloudVerdict] = []
    logs: list[tuple[str, str]] = []
    core = CloudLink(
        settings(tmp_path, **changes),
        alert=alerts.append,
        cloud_verdict=verdicts.append,
        load_model=load_model,
        log=lambda level, message: logs.append((level, message)),
        clock=clock.clock(),
    )
    try:
        yield Link(core, clock, alerts, verdicts, logs)
    finally:
        core.stop()


def part(part_id: str, verdict: int = NORMAL, decided_ns: int | None = None, capture_ago_ms: int = 50) -> PartVerdict:
    decided_ns = T0 + S if decided_ns is None else decided_ns
    return PartVerdict(
        part_id=part_id,
        verdict=verdict,
        reasons=("visual",),
        defect_probability=0.6,
        process_anomaly_score=math.nan,
        process_flags=0,
        model_version="1.0.0",
        encoder_count=-1,
        capture_ns=decided_ns - capture_ago_ms * MS,
        decision_ns=decided_ns,
        capture_to_decision_ms=float(capture_ago_ms),
    )


def image(part_id: str, captured: bool = True) -> PartImage:
    pixels = np.full((48, 64, 3), 128, np.uint8)
    pixels[10:20, 10:30] = (0, 0, 255)
    return PartImage(part_id, captured, lambda: pixels)


def unreadable_image(part_id: str) -> PartImage:
    def decode() -> np.ndarray:
        raise ValueError("unsupported image encoding 'yuv422'")

    return PartImage(part_id, True, decode)


# -- duplicate recovery ----------------------------------------------------------------------------------------


def test_a_restarted_link_stores_each_replayed_verdict_once_and_recovers_those_decided_while_down(tmp_path):
    clock = HandClock()
    first = [part("before_1"), part("before_2", decided_ns=T0 + 2 * S)]
    with cloud_link(tmp_path, clock) as link:
        for verdict in first:
            link.core.on_part(verdict)
        assert [r["part_id"] for r in link.stored("part")] == ["before_1", "before_2"]
    # Down for a minute; the decision node decided two more (one of them a re-inspect), then the link restarts.
    while_down = [part("down_1", decided_ns=T0 + 10 * S), part("down_2", REINSPECT, decided_ns=T0 + 20 * S)]
    clock.advance(60 * S)
    with cloud_link(tmp_path, clock, offload=OffloadSettings(enabled=True)) as link:
        link.core.on_frame(image("down_2"))
        for verdict in [*first, *while_down]:  # the decision node's history, replayed to the new subscriber
            link.core.on_part(verdict)
        link.core.on_part(part("after", decided_ns=clock.wall + S))
        parts = link.stored("part")
        assert [r["part_id"] for r in parts] == ["before_1", "before_2", "down_1", "down_2", "after"]
        assert [r["seq"] for r in parts] == [1, 2, 3, 4, 5], "the replay took no sequence number"
        health = link.health()
        assert (health["parts_already_stored"], health["parts_recovered"]) == (2, 2)
        assert link.stored("verify_request") == [] and link.stored("verify") == [], "no offload for a recovered part"


# -- samples ---------------------------------------------------------------------------------------------------


def test_samples_are_jpegs_of_the_chosen_verdicts_within_the_byte_budget_and_interval(tmp_path):
    sample = SampleSettings(enabled=True, verdicts=("DEFECTIVE",), bytes_per_hour=3000, min_interval_s=5.0)
    with cloud_link(tmp_path, sample=sample) as link:
        core, clock = link.core, link.time
        core.on_frame(image("d1"))
        core.on_part(part("d1", DEFECTIVE))
        core.on_frame(image("r1"))
        core.on_part(part("r1", REINSPECT))  # not a sampled verdict
        core.on_frame(image("d2"))
        core.on_part(part("d2", DEFECTIVE))  # within min_interval_s of d1
        samples = link.stored("sample")
        assert [s["part_id"] for s in samples] == ["d1"]
        schemas.validator("sample").validate(samples[0])
        assert (samples[0]["width"], samples[0]["height"], samples[0]["verdict"]) == (64, 48, "DEFECTIVE")
        assert link.health()["samples_over_budget"] == 1
        for i in range(2, 10):
            clock.advance(6 * S)
            core.on_frame(image(f"d{i + 1}"))
            core.on_part(part(f"d{i + 1}", DEFECTIVE))
        sent = link.health()["sample_bytes_last_hour"]
        assert 0 < sent <= 3000 and link.health()["samples_over_budget"] > 1, link.health()
        count = len(link.stored("sample"))
        clock.advance(3600 * S)  # the sliding hour is over: the budget is free again
        assert link.health()["sample_bytes_last_hour"] == 0
        core.on_frame(image("fresh"))
        core.on_part(part("fresh", DEFECTIVE))
        assert len(link.stored("sample")) == count + 1


def test_a_sample_without_its_frame_or_with_an_unreadable_one_is_counted_not_sent(tmp_path):
    sample = SampleSettings(enabled=True, min_interval_s=0.0)
    with cloud_link(tmp_path, sample=sample, frame_buffer=2) as link:
        core = link.core
        core.on_frame(image("lost"))
        core.on_frame(image("failed_capture", captured=False))
        core.on_frame(image("x"))
        core.on_frame(image("y"))  # the buffer keeps the last 2 captured frames: "lost" is gone
        core.on_part(part("lost", DEFECTIVE))
        core.on_part(part("failed_capture", DEFECTIVE))
        core.on_frame(unreadable_image("odd"))
        core.on_part(part("odd", DEFECTIVE))
        core.on_part(part("y", DEFECTIVE))
        assert [s["part_id"] for s in link.stored("sample")] == ["y"]
        assert (link.health()["image_missing"], link.health()["image_errors"]) == (2, 1)
        assert any(level == "warn" and "odd" in message for level, message in link.logs)


def test_random_samples_cover_every_verdict_and_carry_the_flag_and_the_heatmap(tmp_path):
    import base64

    import cv2

    from qc_cell.bridge.sampler import random_pick

    # the pick is a hash of the part id: about `rate` of all parts, the same parts every time, any verdict
    ids = [f"p{i}" for i in range(20000)]
    share = sum(random_pick(i, 0.01) for i in ids) / len(ids)
    assert 0.008 < share < 0.012 and not any(random_pick(i, 0.0) for i in ids) and all(random_pick(i, 1.0) for i in ids)
    picked = [i for i in ids if random_pick(i, 0.01)][:3]
    not_picked = next(i for i in ids if not random_pick(i, 0.01))
    sample = SampleSettings(enabled=True, verdicts=("DEFECTIVE",), min_interval_s=0.0, random_rate=0.01)
    with cloud_link(tmp_path, sample=sample) as link:
        core = link.core
        cam = np.zeros((24, 32), np.uint8)
        cam[:, 16:] = 255  # the model looked at the right half
        for pid, verdict in zip(picked, (NORMAL, REINSPECT, NORMAL), strict=True):
            core.on_frame(image(pid))
            core.on_heatmap(PartImage(pid, True, lambda: cam))
            core.on_part(part(pid, verdict))
        core.on_frame(image(not_picked))
        core.on_part(part(not_picked, NORMAL))  # neither picked nor a sampled verdict
        core.on_frame(image("d1"))
        core.on_part(part("d1", DEFECTIVE))  # sampled for its verdict, no heatmap sent for it
        samples = {s["part_id"]: s for s in link.stored("sample")}
        assert set(samples) == {*picked, "d1"}
        for pid in picked:
            schemas.validator("sample").validate(samples[pid])
            assert samples[pid]["random_sample"] is True
            heat = cv2.imdecode(np.frombuffer(base64.b64decode(samples[pid]["heatmap_b64"]), np.uint8), 0)
            assert heat.shape == (48, 64)  # scaled to the sample image
            assert heat[:, 40:].mean() > 200 and heat[:, :24].mean() < 30
        assert "random_sample" not in samples["d1"] and "heatmap_b64" not in samples["d1"]
        assert link.health()["random_samples_sent"] == 3


def test_the_random_rate_is_a_share():
    with pytest.raises(BridgeConfigError, match="sample_random_rate"):
        SampleSettings(random_rate=1.5)


def test_retune_changes_the_sample_budget_and_refuses_what_cannot_change(tmp_path):
    sample = SampleSettings(enabled=True, bytes_per_hour=0, min_interval_s=0.0)
    with cloud_link(tmp_path, sample=sample) as link:
        link.core.on_frame(image("a"))
        link.core.on_part(part("a", DEFECTIVE))
        assert link.stored("sample") == []
        link.core.retune({"sample_bytes_per_hour": 10_000_000})
        link.core.on_frame(image("b"))
        link.core.on_part(part("b", DEFECTIVE))
        assert [s["part_id"] for s in link.stored("sample")] == ["b"]
        with pytest.raises(ValueError, match="frame_buffer"):
            link.core.retune({"frame_buffer": 3})


def test_only_image_verdicts_can_be_sampled():
    with pytest.raises(BridgeConfigError, match="NORMAL"):
        SampleSettings(enabled=True, verdicts=("NORMAL", "DEFECTIVE"))


# -- offload and the cloud's answers --------------------------------------------------------------------------


def _response(request_id: str, part_id: str, verdict: str = "NORMAL", **extra) -> bytes:
    body = {"schema_version": 1, "type": "verify_response", "part_id": part_id, "request_id": request_id,
            "verdict": verdict, **extra}  # fmt: skip
    return json.dumps(body).encode()


def test_offload_sends_reinspect_parts_with_slack_and_reports_the_others_not_sent(tmp_path):
    offload = OffloadSettings(enabled=True, slack_ms=800.0, min_remaining_ms=100.0)
    with cloud_link(tmp_path, offload=offload) as link:
        core, clock = link.core, link.time
        decided = clock.wall
        core.on_frame(image("r1"))
        core.on_part(part("r1", REINSPECT, decided_ns=decided, capture_ago_ms=50))
        core.on_frame(image("r2"))
        core.on_part(part("r2", REINSPECT, decided_ns=decided, capture_ago_ms=750))  # 50 ms of slack left
        core.on_part(part("r3", REINSPECT, decided_ns=decided))  # no frame
        core.on_frame(image("d1"))
        core.on_part(part("d1", DEFECTIVE, decided_ns=decided))  # only re-inspect parts are offloaded
        requests = link.stored("verify_request")
        assert [r["part_id"] for r in requests] == ["r1"]
        schemas.validator("verify_request").validate(requests[0])
        assert requests[0]["deadline"] == records.iso_time(decided - 50 * MS + 800 * MS)
        entry = next(e for e in core.bridge.outbox.pending(0, 100) if e.stream == "verify_request")
        assert entry.expires_ns == decided - 50 * MS + 800 * MS, "unsent at the deadline, it expires"
        not_sent = link.stored("verify")
        assert [(r["part_id"], r["outcome"], r["local_verdict"]) for r in not_sent] == [
            ("r2", "not_sent", "REINSPECT"),
            ("r3", "not_sent", "REINSPECT"),
        ]
        health = link.health()
        assert (health["offload_sent"], health["offload_no_slack"], health["image_missing"]) == (1, 1, 1)


def test_a_cloud_verdict_counts_only_before_the_deadline_and_every_request_gets_one_result(tmp_path):
    offload = OffloadSettings(enabled=True, slack_ms=1000.0, min_remaining_ms=0.0, late_grace_s=5.0)
    with cloud_link(tmp_path, offload=offload) as link:
        core, clock = link.core, link.time
        for part_id in ("fast", "slow", "silent"):
            core.on_frame(image(part_id))
            core.on_part(part(part_id, REINSPECT, decided_ns=clock.wall, capture_ago_ms=50))
        request = {r["part_id"]: r["id"] for r in link.stored("verify_request")}
        clock.advance(200 * MS)
        core.on_message(CELL.verify_response, _response(request["fast"], "fast", "DEFECTIVE", model_version="b4"))
        assert _same_verdict(link.verdicts, CloudVerdict("fast", T0 - 50 * MS, DEFECTIVE, math.nan, "b4"))
        assert math.isnan(link.verdicts[0].defect_probability), "no probability from the cloud: NaN"
        clock.advance(1000 * MS)  # past the deadline of the others
        core.on_message(CELL.verify_response, _response(request["slow"], "slow", "NORMAL", defect_probability=0.1))
        assert [v.part_id for v in link.verdicts] == ["fast"], "a late verdict is not used"
        core.on_message(CELL.verify_response, _response(request["slow"], "slow"))  # answered already
        core.on_message(CELL.verify_response, _response(request["silent"], "fast"))  # not the part asked about
        core.on_message(CELL.verify_response, b'{"schema_version": 1, "verdict": NaN}')
        core.housekeeping()
        assert "silent" not in {r["part_id"] for r in link.stored("verify")}, "still within the late grace"
        clock.advance(5 * S)
        core.housekeeping()
        results = {r["part_id"]: r for r in link.stored("verify")}
        for result in results.values():
            schemas.validator("verify").validate(result)
        assert (results["fast"]["outcome"], results["fast"]["rtt_ms"], results["fast"]["cloud_verdict"]) == (
            "used",
            200.0,
            "DEFECTIVE",
        )
        assert (results["slow"]["outcome"], results["slow"]["rtt_ms"]) == ("late", 1200.0)
        assert (results["silent"]["outcome"], results["silent"]["cloud_verdict"]) == ("no_response", None)
        health = link.health()
        assert (health["inbound_rejected_unknown_request"], health["inbound_rejected_malformed_json"]) == (2, 1)
        assert (health["rtt_count"], health["rtt_max_ms"]) == (2, 1200.0)
        assert (health["offload_used"], health["offload_late"], health["offload_no_response"]) == (1, 1, 1)


def test_second_opinions_send_the_normal_parts_the_edge_was_least_sure_of(tmp_path):
    offload = OffloadSettings(
        enabled=True, slack_ms=1000.0, min_remaining_ms=0.0, second_opinion_share=0.1, max_backlog=100
    )
    with cloud_link(tmp_path, offload=offload) as link:
        core, clock = link.core, link.time
        for i in range(60):  # normal parts at P 0.000 .. 0.059: the last tenth are the least sure
            core.on_frame(image(f"n{i}"))
            core.on_part(replace(part(f"n{i}", NORMAL, decided_ns=clock.wall), defect_probability=0.001 * i))
        sent = [r["part_id"] for r in link.stored("verify_request")]
        assert sent == [f"n{i}" for i in range(49, 60)], sent  # from the 50th normal part on, each a new high
        core.on_frame(image("unsure"))
        core.on_part(replace(part("unsure", NORMAL, decided_ns=clock.wall), defect_probability=0.2))
        request = {r["part_id"]: r["id"] for r in link.stored("verify_request")}
        assert "unsure" in request
        clock.advance(100 * MS)
        core.on_message(CELL.verify_response, _response(request["unsure"], "unsure", "DEFECTIVE"))
        assert [v.part_id for v in link.verdicts] == ["unsure"], "the cloud's DEFECTIVE in time goes to the actuator"
        result = next(r for r in link.stored("verify") if r["part_id"] == "unsure")
        schemas.validator("verify").validate(result)
        assert (result["local_verdict"], result["outcome"], result["cloud_verdict"]) == ("NORMAL", "used", "DEFECTIVE")
        assert result["policy"]["reason"] == "send_second_opinion"
        assert link.health()["offload_policy_send_second_opinion"] == len(request)


def _same_verdict(got: list[CloudVerdict], want: CloudVerdict) -> bool:
    """CloudVerdict equality with NaN probabilities (NaN != NaN)."""
    return len(got) == 1 and replace(got[0], defect_probability=0.0) == replace(want, defect_probability=0.0)


# -- model updates ---------------------------------------------------------------------------------------------


def test_update_rejections_are_reported_at_most_ten_a_minute_and_counted_beyond(tmp_path):
    with cloud_link(tmp_path) as link:  # updates disabled: every manifest is answered with a rejection
        for _ in range(15):
            link.core.on_message(CELL.model_update, b'{"any": "manifest"}')
        reports = link.stored("model_status")
        assert len(reports) == 10 and {(r["event"], r["reason"]) for r in reports} == {
            ("update_rejected", "updates_disabled")
        }
        assert [a.code for a in link.alerts] == ["MODEL_UPDATE_REJECTED"] * 10
        assert {a.severity for a in link.alerts} == {"WARN"}
        health = link.health()
        assert (health["rejection_reports_suppressed"], health["inbound_rejected_updates_disabled"]) == (5, 15)
        link.time.advance(61 * S)  # the window has passed
        link.core.on_message(CELL.model_update, b"{}")
        assert len(link.stored("model_status")) == 11
        link.core.on_message(CELL.topic("model/chunk/1.0/0"), b"bytes")  # no chunk handler without updates
        assert link.health()["inbound_rejected_unexpected_topic"] == 1


# -- process and model state -----------------------------------------------------------------------------------


def _process(flags: int) -> ProcessReport:
    return ProcessReport(T0, 21.0, math.nan, 0.1, 0.2, flags, flags != 0, False)


def test_process_state_goes_out_on_a_change_or_once_per_period(tmp_path):
    with cloud_link(tmp_path, process_period_s=10.0) as link:
        for flags in (0, 0, 4, 4, 0):
            link.core.on_process(_process(flags))
            link.time.advance(S)
        assert [r["flags"] for r in link.stored("process")] == [0, 4, 0]
        link.time.advance(10 * S)
        link.core.on_process(_process(0))
        assert [r["flags"] for r in link.stored("process")] == [0, 4, 0, 0]
        link.core.retune({"process_period_s": 0.0})
        link.core.on_process(_process(0))
        assert len(link.stored("process")) == 5


def test_records_of_a_cell_with_simulated_inputs_name_them_and_a_real_cells_do_not(tmp_path):
    reject = RejectReport("p1", DEFECTIVE, 0, "sim", "reject", T0, T0 + S, T0 + S, 0.1, "")
    for simulated, expected in ((("process_sensors", "ejector"), ["process_sensors", "ejector"]), ((), None)):
        with cloud_link(tmp_path / str(len(simulated)), simulated_inputs=simulated) as link:
            link.core.on_part(part("p1", DEFECTIVE))
            link.core.on_reject(reject)
            link.core.on_process(_process(0))
            for stream in ("part", "reject", "process"):
                (record,) = link.stored(stream)
                assert record.get("simulated") == expected, f"{stream}: {record}"
                schemas.validator(stream).validate(record)
    assert simulated_inputs(" camera, ejector ") == ("camera", "ejector")
    with pytest.raises(BridgeConfigError, match=r"simulated_inputs \['plc'\]"):
        simulated_inputs("plc")


def test_each_model_state_change_is_one_retained_record(tmp_path):
    with cloud_link(tmp_path) as link:
        active = ModelReport(T0, "1.0.0", "a" * 64, "onnxruntime", "fp32", 2, "")
        for report in (active, active, replace(active, version="1.1.0"), replace(active, version="1.1.0")):
            link.core.on_model(report)
        stored = link.stored("model_status")
        assert [(r["active_version"], r["state"]) for r in stored] == [("1.0.0", "ACTIVE"), ("1.1.0", "ACTIVE")]
        assert all(e.retain for e in link.core.bridge.outbox.pending(0, 10))


def test_updates_are_ordered_against_the_store_not_the_model_report(tmp_path):
    """model/active is reported to the cloud, but any participant of the graph can publish it (issue 18): the
    active version that orders updates is the model store's pointer."""
    updates = UpdateSettings(
        update_dir=tmp_path / "updates", keys={}, cell_path=CELL.path, model_store_dir=tmp_path / "store"
    )

    def refuse(path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        return False, "not in this test", ""

    with cloud_link(tmp_path, updates=updates, load_model=refuse) as link:
        loading = ModelReport(T0, "1.2.0", "a" * 64, "onnxruntime", "fp32", 1, "")
        link.core.on_model(loading)
        link.core.on_model(replace(loading, state=2))
        assert link.health()["model_active"] == "", "a report on model/active does not make a model active"
        store = ModelStore(tmp_path / "store")
        manifest = write_package(tmp_path / "pkg", "1.2.0")
        store.install(tmp_path / "pkg", manifest, ORIGIN_UPDATE)
        store.activate(manifest)  # what inference does once the model serves
        assert (link.health()["model_active"], link.health()["model_installed"]) == ("1.2.0", "")
        assert CELL.model_chunks in link.core.settings.bridge_settings().subscriptions, "chunks need updates on"


def test_the_model_status_names_the_defect_types_of_the_active_model_from_its_manifest(tmp_path):
    updates = UpdateSettings(
        update_dir=tmp_path / "updates", keys={}, cell_path=CELL.path, model_store_dir=tmp_path / "store"
    )
    with cloud_link(tmp_path, updates=updates, load_model=lambda *a: (False, "unused", "")) as link:
        store = ModelStore(tmp_path / "store")
        trained = {"dataset": {"name": "screws", "defect_types": ["crack", "scratch"]}}
        manifest = write_package(tmp_path / "pkg", "2.0.0", manifest_overrides=trained)
        store.install(tmp_path / "pkg", manifest, ORIGIN_UPDATE)
        link.core.on_model(ModelReport(T0, "2.0.0", manifest.sha256, "onnxruntime", "fp32", 2, ""))
        link.core.on_model(ModelReport(T0, "9.9.9", "b" * 64, "onnxruntime", "fp32", 2, ""))  # not in the store
        first, second = link.stored("model_status")
        assert first["defect_types"] == ["crack", "scratch"] and "defect_types" not in second
        schemas.validator("model_status").validate(first)


# -- losses and health -----------------------------------------------------------------------------------------


def test_outbox_losses_are_alerted_at_most_once_per_period_naming_the_lost_records(tmp_path):
    limits = OutboxLimits(max_records=5, policy="drop_oldest")
    with cloud_link(tmp_path, outbox_limits=limits, loss_alert_period_s=10.0) as link:
        for i in range(8):
            link.core.on_part(part(f"p{i}"))
        assert link.core.health().level == HealthLevel.ERROR
        link.core.housekeeping()
        assert len(link.alerts) == 1
        alert = link.alerts[0]
        assert (alert.severity, alert.code) == ("ERROR", "OUTBOX_FULL")
        assert alert.message.endswith("(policy drop_oldest): part #1-3 (evicted: drop_oldest)"), alert.message
        assert ("error", alert.message) in link.logs
        link.core.on_part(part("p8"))
        link.time.advance(5 * S)
        link.core.housekeeping()
        assert len(link.alerts) == 1, "one alert per loss_alert_period_s"
        link.time.advance(5 * S)
        link.core.housekeeping()
        assert [a.code for a in link.alerts] == ["OUTBOX_FULL", "OUTBOX_FULL"]
        assert link.alerts[1].message.endswith("part #4 (evicted: drop_oldest)"), link.alerts[1].message
        health = link.core.health()
        assert health.values["lost_total"] == 4 and health.message.startswith("4 records lost, 0 refused")


def test_health_figures_and_level(tmp_path):
    with cloud_link(tmp_path) as link:
        link.core.on_part(part("p1"))
        health = link.core.health()
        assert (health.level, health.message) == (HealthLevel.WARN, "not connected (connecting); 1 stored")
        values = health.values
        assert (values["outbox_depth"], values["lost_total"], values["connected"]) == (1, 0, False)
        assert not any(k.startswith(("offload_", "rtt_", "sample_", "update_", "model_")) for k in values), values
    with cloud_link(tmp_path / "small", outbox_limits=OutboxLimits(max_records=10)) as link:
        for i in range(10):
            link.core.on_part(part(f"p{i}"))
        health = link.core.health()
        assert health.values["lost_total"] == 0 and health.level == HealthLevel.ERROR, "above 90 % full"
        assert health.message == "0 records lost, 0 refused, outbox 100% full (drop_oldest)"
    offload, sample = OffloadSettings(enabled=True), SampleSettings(enabled=True)
    with cloud_link(tmp_path, offload=offload, sample=sample) as link:
        values = link.health()
        assert (values["rtt_count"], values["rtt_p50_ms"], values["sample_bytes_last_hour"]) == (0, None, 0)


def test_health_is_ok_when_connected_with_nothing_lost(tmp_path):
    with Mosquitto() as broker:
        core = CloudLink(settings(tmp_path, broker.url), alert=lambda _alert: None)
        core.start()
        try:
            deadline = time.monotonic() + 10.0
            while not core.health().values["connected"] and time.monotonic() < deadline:
                time.sleep(0.05)
            health = core.health()
            assert (health.level, health.message) == (HealthLevel.OK, "connected; 0 records pending")
        finally:
            core.stop()


def test_the_link_imports_no_ros():
    code = (
        "import sys, qc_cell.bridge.cloud_link; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'qc_interfaces', 'rosidl_runtime_py')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_policy_sends_the_roi_at_the_cloud_size_and_reports_its_reasons(tmp_path):
    offload = OffloadSettings(
        enabled=True, slack_ms=300.0, min_remaining_ms=0.0, max_side=24, roi=(8, 4, 48, 40), prior_rtt_ms=100.0
    )
    with cloud_link(tmp_path, offload=offload) as link:
        core, clock = link.core, link.time
        core.on_frame(image("r1"))
        core.on_part(part("r1", REINSPECT, decided_ns=clock.wall, capture_ago_ms=50))  # 250 ms left: fits
        core.on_frame(image("r2"))
        core.on_part(part("r2", REINSPECT, decided_ns=clock.wall, capture_ago_ms=200))  # 100 ms: base + margin not
        (request,) = link.stored("verify_request")
        assert (request["part_id"], request["width"], request["height"]) == ("r1", 24, 20)  # crop 48x40 -> 24 wide
        clock.advance(60 * MS)
        expired = {**json.loads(_response(request["id"], "r1")), "outcome": "expired", "verdict": None}
        core.on_message(CELL.verify_response, json.dumps(expired).encode())
        assert link.verdicts == [], "an expired answer carries no verdict to use"
        results = {r["part_id"]: r for r in link.stored("verify")}
        for result in results.values():
            schemas.validator("verify").validate(result)
        r1, r2 = results["r1"], results["r2"]
        assert (r1["outcome"], r1["cloud_verdict"], r1["rtt_ms"]) == ("expired", None, 60.0)
        assert r1["policy"]["reason"] == "send_reinspect" and r1["policy"]["roi"] == [8, 4, 48, 40]
        assert r1["policy"]["width"] == 24 and r1["policy"]["image_bytes"] == len(records.encode(request))
        # 100 ms left < prior round trip + margin; no probe either, with one request still unanswered
        assert (r2["outcome"], r2["policy"]["reason"]) == ("not_sent", "no_slack")
        health = link.health()
        assert health["offload_policy_send_reinspect"] == 1 and health["offload_expired"] == 1


def test_each_reconciliation_finding_is_one_valid_reconcile_record(tmp_path):
    from qc_cell.bridge.inputs import ReconcileReport

    with cloud_link(tmp_path) as link:
        link.core.on_reconcile(ReconcileReport("p1", DEFECTIVE, True, "reject", 0, 0, 1, T0, T0 + 2 * S))
        link.core.on_reconcile(ReconcileReport("p2", 3, False, "reject", 1, -1, 0, T0, T0 + 2 * S))
        resolved, overdue = link.stored("reconcile")
        assert (resolved["part_id"], resolved["status"], resolved["outcome"]) == ("p1", "RESOLVED", "DONE")
        assert (overdue["part_id"], overdue["status"], overdue["outcome"], overdue["has_verdict"]) == (
            "p2",
            "OVERDUE",
            None,
            False,
        )
        for record in (resolved, overdue):
            schemas.validator("reconcile").validate(record)
