"""The sample record's optional fields (heatmap_b64, random_sample): schema_version stays 1 because a record
without them, as the first cells sent it, still validates; wrong types are refused."""

from __future__ import annotations

import base64

from qc_contract import records, schemas
from qc_contract.schema_check import is_valid

JPEG = base64.b64encode(b"\xff\xd8\xff\xe0fake").decode()
OLD = {
    "schema_version": 1,
    "type": "sample",
    "cell": "plant1/line2/cell3",
    "epoch": "0badc0de",
    "seq": 4,
    "id": "0badc0de-sample-4",
    "part_id": "p1",
    "verdict": "REINSPECT",
    "defect_probability": 0.61,
    "reasons": [],
    "model_version": "m1",
    "capture_time": "2026-12-06T07:00:00.123Z",
    "encoding": "jpeg",
    "width": 64,
    "height": 48,
    "image_b64": JPEG,
}


def _ok(record: dict) -> bool:
    errors = list(schemas.validator("sample").iter_errors(record))
    assert is_valid("sample", record) == (not errors)  # the fast checker and jsonschema agree
    return not errors


def test_an_old_sample_without_the_optional_fields_still_validates_as_version_1():
    assert _ok(OLD)


def test_heatmap_and_random_flag_validate_and_are_left_out_when_absent():
    body = records.image_record(
        part_id="p1", verdict=0, defect_probability=0.01, reasons=[], model_version="m1", capture_ns=1,
        width=64, height=48, jpeg_b64=JPEG, heatmap_b64=JPEG, random_sample=True,
    )  # fmt: skip
    assert body["heatmap_b64"] == JPEG and body["random_sample"] is True
    assert _ok({**OLD, **{k: body[k] for k in ("verdict", "heatmap_b64", "random_sample")}})
    plain = records.image_record(
        part_id="p1", verdict=1, defect_probability=0.6, reasons=[], model_version="m1", capture_ns=1,
        width=64, height=48, jpeg_b64=JPEG,
    )  # fmt: skip
    assert "heatmap_b64" not in plain and "random_sample" not in plain


def test_wrong_types_of_the_optional_fields_are_refused():
    assert not _ok({**OLD, "random_sample": "yes"})
    assert not _ok({**OLD, "heatmap_b64": 3})
    assert not _ok({**OLD, "heatmap": JPEG})  # unknown keys stay refused
