"""The defect types a model knows: an optional key of the manifest's free-form dataset section (readers and the
manifest schema unchanged), carried by the optional `defect_types` of the model_status record."""

from __future__ import annotations

from qc_contract import records, schemas
from qc_contract.model_manifest import SCHEMA_VERSION, Manifest

BASE = {"schema_version": SCHEMA_VERSION, "version": "1.0.0", "sha256": "a" * 64}


def test_defect_types_from_the_manifest_with_the_per_type_fallback():
    trained = Manifest.from_dict({**BASE, "dataset": {"defect_types": ["crack", "scratch"], "per_type": {"x": 1}}})
    assert trained.defect_types == ("crack", "scratch")
    older = Manifest.from_dict({**BASE, "dataset": {"per_type": {"good": 9, "dent": 2, "burr": 1}}})
    assert older.defect_types == ("burr", "dent")
    assert Manifest.from_dict(BASE).defect_types == ()
    assert Manifest.from_dict(trained.to_dict()).defect_types == ("crack", "scratch")  # survives a round trip


def test_the_model_status_record_carries_them_optionally_and_old_records_still_validate():
    args = dict(stamp_ns=10**18, version="1.0.0", sha256="a" * 64, backend="onnxruntime", precision="fp32", state=2)
    envelope = {"schema_version": 1, "type": "model_status", "cell": "s/l/c", "epoch": "0badc0de", "seq": 1}
    envelope["id"] = "0badc0de-model_status-1"
    old = {**envelope, **records.model_state(**args, message="")}
    assert "defect_types" not in old
    schemas.validator("model_status").validate(old)
    new = {**envelope, **records.model_state(**args, message="", defect_types=["crack", "dent"])}
    schemas.validator("model_status").validate(new)
    assert new["defect_types"] == ["crack", "dent"]
    assert list(schemas.validator("model_status").iter_errors({**new, "defect_types": "crack"}))
