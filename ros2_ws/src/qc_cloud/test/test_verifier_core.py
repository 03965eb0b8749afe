"""The verifier's core without MQTT, on a real ONNX model package (the brightness classifier with known
weights, loaded by the edge's own backend code): scoring, dynamic batching, the deadline rule and refusals."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from verify_requests import CELL, request_payload, request_topic

from qc_cell.inference.synthetic_models import write_package
from qc_cloud.verifier.core import Batcher, Verifier, VerifierSettings
from qc_cloud.verifier.model import load_package
from qc_contract import schemas


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    package = tmp_path_factory.mktemp("cloud") / "pkg"
    write_package(package, "cloud-test-1", input_hw=(32, 32))
    scorer, line = load_package(package, backend="onnxruntime", max_batch=8, threads=1)
    assert "golden set 2/2" in line
    yield scorer
    scorer.close()


def make(scorer, **settings):
    answers = []
    verifier = Verifier(VerifierSettings(**settings), scorer, answers.append)
    return verifier, answers


def valid(answer) -> None:
    errors = list(schemas.validator("verify_response").iter_errors(answer.response))
    assert not errors, errors
    if answer.verification is not None:
        errors = list(schemas.validator("verification").iter_errors(answer.verification))
        assert not errors, errors


def test_scores_a_batch_with_the_package_and_answers_in_the_contract(scorer):
    verifier, answers = make(scorer, max_batch=8, max_wait_ms=0)
    for seq, level in ((1, 200), (2, 40), (3, 220)):
        verifier.admit(request_topic(), request_payload(seq, level))
    assert verifier.run_once(timeout=1) == 3
    assert [a.response["verdict"] for a in answers] == ["DEFECTIVE", "NORMAL", "DEFECTIVE"]
    for answer in answers:
        valid(answer)
        assert answer.cell == CELL and answer.response["outcome"] == "scored"
        record = answer.verification
        assert record["batch_size"] == 3 and record["model_version"] == "cloud-test-1"
        assert record["local_verdict"] == "REINSPECT" and record["request_id"] == answer.response["request_id"]
    assert answers[0].response["request_id"] == "0badc0de-verify_request-1"
    report = verifier.report()
    assert report["counts"] == {"scored": 3} and report["batch_sizes"] == {"3": 1}
    assert report["service_ms_p50"] is not None and report["queue_depth"] == 0


def test_batches_close_when_full_or_after_the_wait():
    batcher = Batcher(max_batch=4, max_wait_ms=50, max_queue=100)
    for i in range(6):
        assert batcher.put(i)
    assert batcher.take(timeout=1) == [0, 1, 2, 3]  # full
    assert batcher.take(timeout=1) == [4, 5]  # the wait ran out with 2
    late = threading.Timer(0.01, lambda: batcher.put(6))
    late.start()
    assert batcher.take(timeout=2) == [6]  # waits for the first, then max_wait for more
    assert batcher.take(timeout=0.05) == []


def test_a_request_past_its_deadline_when_dequeued_is_expired_not_scored(scorer):
    verifier, answers = make(scorer, max_wait_ms=0)
    verifier.admit(request_topic(), request_payload(1, 200, deadline_in_s=-0.001))
    verifier.admit(request_topic(), request_payload(2, 200, deadline_in_s=5))
    verifier.run_once(timeout=1)
    by_id = {a.response["request_id"][-1]: a for a in answers}
    assert by_id["1"].response["outcome"] == "expired" and by_id["1"].response["verdict"] is None
    assert by_id["1"].verification["reason"] == "deadline_passed"
    assert by_id["2"].response["outcome"] == "scored"
    for answer in answers:
        valid(answer)
    assert verifier.report()["counts"] == {"expired": 1, "scored": 1}


def test_bad_requests_are_refused_with_a_reason_and_the_service_goes_on(scorer):
    verifier, answers = make(scorer, allowed_cells=("plant1/*",), max_request_bytes=64 * 1024, max_image_pixels=10_000)
    good = request_payload(1)
    record = json.loads(good)
    cases = {
        "not_allowed": (request_topic("plant9/line1/cell1"), request_payload(2, cell="plant9/line1/cell1")),
        "cell_mismatch": (request_topic("plant1/line2/other"), good),
        "oversized": (request_topic(), b"{" + b" " * 70_000 + b"}"),
        "malformed_json": (request_topic(), b"{not json"),
        "unknown_field": (request_topic(), json.dumps({**record, "extra": 1}).encode()),
        "bad_image": (request_topic(), json.dumps({**record, "image_b64": "AAAA"}).encode()),
        "bad_topic": ("qc/plant1/verify/request", good),
    }
    for topic, payload in cases.values():
        verifier.admit(topic, payload)
    big = request_payload(3, size=(200, 100))  # 20,000 pixels > 10,000
    verifier.admit(request_topic(), big)
    reasons = [a.response.get("reason") for a in answers]
    assert reasons == [*cases, "oversized"]
    for answer in answers:
        valid(answer)
        assert answer.response["outcome"] == "refused"
    not_allowed = answers[0]
    assert not_allowed.cell == "plant9/line1/cell1" and not_allowed.verification is None  # answered, not stored
    assert answers[-2].cell is None  # no cell in the topic: nobody to answer
    verifier.admit(request_topic(), good)
    verifier.run_once(timeout=1)
    assert answers[-1].response["outcome"] == "scored"
    counts = verifier.report()["counts"]
    assert counts["scored"] == 1 and counts["refused_oversized"] == 2 and counts["refused_not_allowed"] == 1


def test_a_full_queue_refuses_at_once_rather_than_letting_requests_expire(scorer):
    verifier, answers = make(scorer, max_queue=2)
    for seq in range(1, 5):
        verifier.admit(request_topic(), request_payload(seq))
    assert [a.response["reason"] for a in answers] == ["overloaded", "overloaded"]
    assert verifier.batcher.depth == 2


def test_a_model_failure_answers_the_batch_and_the_service_stays_up(scorer):
    class Broken:
        version, max_batch, preprocessing = "broken-1", 8, scorer.preprocessing

        def probabilities(self, batch):
            raise RuntimeError("CUDA error: device lost")

    answers = []
    verifier = Verifier(VerifierSettings(), Broken(), answers.append)
    verifier.admit(request_topic(), request_payload(1))
    verifier.run_once(timeout=1)
    assert answers[0].response["outcome"] == "refused" and answers[0].response["reason"] == "model_error"


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        VerifierSettings(max_batch=0)
    with pytest.raises(ValueError, match="allowed_cells"):
        VerifierSettings(allowed_cells=())
    assert np.isclose(VerifierSettings().threshold, 0.5)
