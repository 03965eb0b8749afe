"""System tests of the edge-cloud collaboration: the whole cell as processes (cell runner), a real mosquitto and
`qc_cloud verifier` as a process. The cell's bridge offloads parts with the latency-aware policy; the verifier
answers; the cell uses answers in time and keeps its local verdict otherwise, also when the verifier is killed
mid-stream and restarted. Every request and result is checked against the contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from qc_cell.bringup.demo import run_demo
from qc_contract import schemas

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "demo.yaml"
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(900)]

# A wide re-inspection band so that a short run has enough parts to offload; a generous slack for a loaded CI box.
OVERRIDES = {
    "camera_driver": {"rate_hz": 8.0, "defect_rate": 0.3},
    "decision": {"reinspect_threshold": 0.02, "defective_threshold": 0.98},
    # 1,000 mm at 200 mm/s: 5 s from camera to ejector, so that even a verifier on a loaded CI machine answers
    # some requests in time (the benchmark measures the tight cases).
    "reject_actuator": {"reject_distance_mm": 1000.0, "belt_speed_mm_s": 200.0},
    "cloud_bridge": {
        "offload_enabled": True,
        "offload_slack_ms": 4500.0,
        "offload_min_remaining_ms": 0.0,
        "offload_late_grace_s": 5.0,
        "offload_max_side": 224,
    },
}


class VerifierProcess:
    """`qc_cloud verifier` with the cell's own model package, started once the broker is up."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, broker_url: str) -> None:
        cmd = [sys.executable, "-m", "qc_cloud.cli", "verifier", "--model", str(REPO / "models" / "default")]
        cmd += ["--broker", broker_url, "--backend", "onnxruntime", "--threads", "1", "--worker", f"w{self.starts}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("a") as out:
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def _run(tmp_path: Path, parts: int, on_tick, captured: dict | None = None) -> tuple[dict, object]:
    from qc_cell.bringup import demo

    captured = {} if captured is None else captured
    original = demo.Subscriber

    def recording_subscriber(*args, **kwargs):  # the demo's 'cloud' subscriber, kept to read its messages
        subscriber = original(*args, **kwargs)
        captured["cloud"] = subscriber
        return subscriber

    demo.Subscriber = recording_subscriber
    try:
        result = run_demo(parts, PARAMS, tmp_path, namespace=f"ec{os.getpid()}", extra_overrides=OVERRIDES,
                          on_tick=on_tick)  # fmt: skip
    finally:
        demo.Subscriber = original
    return result, captured["cloud"]


def _records(cloud, suffix: str) -> list[dict]:
    return [m.json() for m in cloud.snapshot(suffix)]


def _assert_every_part_accounted(result: dict, parts: int) -> None:
    assert result["parts_with_verdict"] == parts, f"expected {parts} verdicts: {result}"
    assert result["parts_without_verdict"] == 0 and result["duplicate_verdicts"] == 0, result


def test_the_cell_offloads_to_the_verifier_and_uses_its_answers_in_time(tmp_path):
    verifier = VerifierProcess(tmp_path / "verifier.log")
    captured: dict = {}
    injected: list[bytes] = []

    def start_verifier_then_replay(runner, broker) -> None:
        if verifier.starts == 0:
            verifier.start(broker.url)
        cloud = captured.get("cloud")
        answered = cloud.snapshot("/verify/response") if cloud else []
        if len(answered) >= 1 and not injected:
            # A replayed old answer, the same answer for another cell's part, and one to a request never made:
            # the cell must ignore each (no second result, no verdict); the core tests check they are counted.
            old = answered[0]
            forged = {**old.json(), "part_id": "othercell-00000001"}
            unknown = {**old.json(), "request_id": "feedf00d-verify_request-1"}
            for payload in (old.payload, json.dumps(forged).encode(), json.dumps(unknown).encode()):
                cloud.publish(old.topic, payload)
                injected.append(payload)

    try:
        result, cloud = _run(tmp_path, 150, start_verifier_then_replay, captured)
    finally:
        verifier.stop()
    assert injected, "no answers came in to replay"
    _assert_every_part_accounted(result, 150)
    requests, results = _records(cloud, "/verify/request"), _records(cloud, "/verify/result")
    verifications = _records(cloud, "/verify/verification")
    ours = {"feedf00d-verify_request-1"}  # the injected answer to a request never made
    responses = [r for r in _records(cloud, "/verify/response") if r["request_id"] not in ours]
    assert requests, f"no part was offloaded; verifier log: {(tmp_path / 'verifier.log').read_text()[-2000:]}"
    for name, items in (("verify_request", requests), ("verify", results), ("verify_response", responses),
                        ("verification", verifications)):  # fmt: skip
        for item in items:
            schemas.validator(name).validate(item)
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes["used"] >= 1, (
        f"no cloud verdict used: {outcomes}; {(tmp_path / 'verifier.log').read_text()[-1500:]}"
    )
    assert {r["request_id"] for r in responses} <= {r["id"] for r in requests}, "answers only to what was asked"
    assert all(r["policy"]["reason"] for r in results), "every result names the policy's reason"
    per_request = Counter(r["request_id"] for r in results if r["request_id"])
    assert set(per_request.values()) == {1}, f"one result per request, replays ignored: {per_request}"
    assert "othercell-00000001" not in {r["part_id"] for r in results}
    sent = {r["id"] for r in requests}
    assert {v["request_id"] for v in verifications} == {r["request_id"] for r in responses} <= sent


def test_a_killed_verifier_costs_no_verdict_and_a_restarted_one_resumes(tmp_path):
    verifier = VerifierProcess(tmp_path / "verifier.log")
    events = {}

    def drill(runner, broker) -> None:
        parts = runner.progress.parts
        if verifier.starts == 0:
            verifier.start(broker.url)
        elif parts >= 40 and "killed" not in events:
            verifier.kill()
            events["killed"] = parts
        elif parts >= 70 and "restarted" not in events:
            verifier.start(broker.url)
            events["restarted"] = parts

    try:
        result, cloud = _run(tmp_path, 130, drill)
    finally:
        verifier.stop()
    assert set(events) == {"killed", "restarted"}, events
    _assert_every_part_accounted(result, 130)
    results = _records(cloud, "/verify/result")
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes["no_response"] + outcomes["late"] >= 1, f"the kill left no unanswered request: {outcomes}"
    workers = Counter(v["verifier"] for v in _records(cloud, "/verify/verification"))
    assert workers["w1"] >= 1, f"the restarted verifier answered nothing: {workers}"
