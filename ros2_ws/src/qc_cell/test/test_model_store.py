"""Model store: versioned, verified copies of packages and an atomically replaced active pointer."""

from __future__ import annotations

import json

import pytest

from qc_cell.inference.model_store import (
    ORIGIN_OPERATOR,
    ORIGIN_PARAMS,
    ORIGIN_UPDATE,
    ModelStore,
    PolicyError,
    StoreError,
)
from qc_cell.inference.synthetic_models import write_package
from qc_contract.model_manifest import Manifest, ManifestError


def _package(tmp_path, version, **kw):
    directory = tmp_path / "incoming" / version
    return directory, write_package(directory, version, **kw)


def test_install_copies_and_verifies_the_package(tmp_path):
    store = ModelStore(tmp_path / "store")
    source, manifest = _package(tmp_path, "1.0.0")
    installed = store.install(source, manifest, ORIGIN_UPDATE)
    assert installed == store.path("1.0.0") and store.contains(installed) and not store.contains(source)
    assert Manifest.load(installed) == manifest
    manifest.verify_model_file(installed)
    assert sorted(p.name for p in (installed / "golden").iterdir()) == ["level_040.png", "level_200.png"]
    assert store.versions() == ["1.0.0"]
    assert [p.name for p in store.versions_dir.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_reinstalling_the_same_model_is_a_no_op_but_a_different_model_under_the_same_version_is_refused(tmp_path):
    store = ModelStore(tmp_path / "store")
    source, manifest = _package(tmp_path, "1.0.0")
    first = store.install(source, manifest, ORIGIN_UPDATE)
    mtime = (first / "model.onnx").stat().st_mtime_ns
    assert (
        store.install(source, manifest, ORIGIN_UPDATE) == first and (first / "model.onnx").stat().st_mtime_ns == mtime
    )
    other_source, other = _package(tmp_path / "b", "1.0.0", gain=3.0)
    with pytest.raises(StoreError, match="already in the store with a different model"):
        store.install(other_source, other, ORIGIN_UPDATE)


def test_a_damaged_copy_of_the_same_version_is_replaced(tmp_path):
    store = ModelStore(tmp_path / "store")
    source, manifest = _package(tmp_path, "1.0.0")
    installed = store.install(source, manifest, ORIGIN_UPDATE)
    (installed / "model.onnx").write_bytes(b"bit rot")
    store.install(source, manifest, ORIGIN_UPDATE)
    manifest.verify_model_file(installed)


def test_a_package_whose_file_does_not_match_its_manifest_is_not_installed(tmp_path):
    store = ModelStore(tmp_path / "store")
    source, manifest = _package(tmp_path, "1.0.0")
    (source / "model.onnx").write_bytes((source / "model.onnx").read_bytes()[:-10])
    with pytest.raises(ManifestError, match="bytes, manifest says"):
        store.install(source, manifest, ORIGIN_UPDATE)
    assert store.versions() == []


@pytest.mark.parametrize("version", ["../evil", "a/b", "", ".hidden", "x" * 200])
def test_versions_that_cannot_name_a_directory_are_refused(tmp_path, version):
    with pytest.raises(StoreError, match="cannot name a store directory"):
        ModelStore(tmp_path / "store").path(version)


def test_active_pointer_history_and_restart(tmp_path):
    root = tmp_path / "store"
    store = ModelStore(root, keep=2)
    assert store.active() is None and store.candidates() == []
    manifests = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        source, manifests[version] = _package(tmp_path, version)
        store.install(source, manifests[version], ORIGIN_UPDATE)
        store.activate(manifests[version])
    active = store.active()
    assert (active.version, active.sha256, active.history) == ("1.2.0", manifests["1.2.0"].sha256, ("1.1.0",))
    # keep=2: the active version and one to roll back to; older ones are pruned from disk.
    assert store.versions() == ["1.1.0", "1.2.0"]
    restarted = ModelStore(root, keep=2)  # what the node sees after a restart
    assert [p.name for p in restarted.candidates()] == ["1.2.0", "1.1.0"]
    document = json.loads((root / "active.json").read_text())
    assert document["version"] == "1.2.0" and not list(root.glob("*.tmp"))


def test_reactivating_an_older_version_moves_it_to_the_front(tmp_path):
    store = ModelStore(tmp_path / "store", keep=5)
    manifests = {}
    for version in ("1.0.0", "2.0.0"):
        source, manifests[version] = _package(tmp_path, version)
        store.install(source, manifests[version], ORIGIN_UPDATE)
        store.activate(manifests[version])
    store.activate(manifests["1.0.0"])
    assert (store.active().version, store.active().history) == ("1.0.0", ("2.0.0",))


def test_activating_a_version_that_is_not_installed_is_refused(tmp_path):
    store = ModelStore(tmp_path / "store")
    _, manifest = _package(tmp_path, "9.9.9")
    with pytest.raises(StoreError, match="not installed"):
        store.activate(manifest)
    assert store.active() is None


def test_a_corrupt_pointer_is_reported_and_gives_no_candidates(tmp_path):
    store = ModelStore(tmp_path / "store")
    (store.root / "active.json").write_text("{truncated")
    with pytest.raises(StoreError, match="unreadable"):
        store.active()
    assert store.candidates() == []


def test_engines_of_pruned_models_are_removed(tmp_path):
    store = ModelStore(tmp_path / "store", keep=1)
    source, old = _package(tmp_path, "1.0.0")
    store.install(source, old, ORIGIN_UPDATE)
    store.activate(old)
    store.engines_dir.mkdir()
    old_engine = store.engines_dir / f"{old.sha256[:12]}_trt10.3_orin_fp16_b1_x.engine"
    old_engine.write_bytes(b"e")
    source, new = _package(tmp_path, "2.0.0", gain=4.0)
    store.install(source, new, ORIGIN_UPDATE)
    new_engine = store.engines_dir / f"{new.sha256[:12]}_trt10.3_orin_fp16_b1_x.engine"
    new_engine.write_bytes(b"e")
    store.activate(new)
    assert not old_engine.exists() and new_engine.exists()


# ---- records and the model policy ------------------------------------------------------------------------------


def _installed(store, tmp_path, version, origin=ORIGIN_UPDATE, **kw):
    source, manifest = _package(tmp_path / f"src-{version}", version, **kw)
    store.install(source, manifest, origin, f"ref-{version}")
    return manifest


def test_install_records_origin_and_order_across_store_objects(tmp_path):
    store = ModelStore(tmp_path / "store")
    first = _installed(store, tmp_path, "1.0.0")
    _installed(store, tmp_path, "1.1.0", ORIGIN_OPERATOR)
    other = ModelStore(tmp_path / "store")  # another process: the cloud_bridge, the operator's tool
    records = other.records()
    assert [(v, r.origin, r.reference, r.seq) for v, r in sorted(records.items())] == [
        ("1.0.0", ORIGIN_UPDATE, "ref-1.0.0", 1),
        ("1.1.0", ORIGIN_OPERATOR, "ref-1.1.0", 2),
    ]
    assert records["1.0.0"].sha256 == first.sha256 and records["1.0.0"].rollback is None
    assert other.newest_installed() == "1.1.0"
    with pytest.raises(StoreError, match="unknown install origin"):
        store.install(tmp_path / "src-1.0.0" / "incoming" / "1.0.0", first, "somebody")


def test_policy_not_installed_changed_older_superseded(tmp_path):
    store = ModelStore(tmp_path / "store")
    v1 = _installed(store, tmp_path, "1.0.0")
    assert store.check_activation("1.0.0", v1.sha256).version == "1.0.0"  # nothing active: any installed one
    with pytest.raises(PolicyError, match="not in the model store"):
        store.check_activation("9.0.0", v1.sha256)
    with pytest.raises(PolicyError, match="changed after its install"):
        store.check_activation("1.0.0", "0" * 64)
    store.activate(v1)
    v2 = _installed(store, tmp_path, "2.0.0", gain=3.0)
    store.check_activation("2.0.0", v2.sha256)  # a fresh, newer install
    store.activate(v2)
    with pytest.raises(PolicyError, match=r"installed before the active 2\.0\.0 was activated"):
        store.check_activation("1.0.0", v1.sha256)
    older = _installed(store, tmp_path, "1.5.0", gain=4.0)
    with pytest.raises(PolicyError, match=r"1\.5\.0 is older than the active 2\.0\.0"):
        store.check_activation("1.5.0", older.sha256)
    store.check_activation("2.0.0", v2.sha256)  # the active one, again


def test_a_rollback_grant_allows_one_activation(tmp_path):
    store = ModelStore(tmp_path / "store")
    v1 = _installed(store, tmp_path, "1.0.0")
    store.activate(v1)
    v2 = _installed(store, tmp_path, "2.0.0", gain=3.0)
    store.activate(v2)
    grant = store.authorise_rollback("1.0.0", ORIGIN_UPDATE, "manifest digest").rollback
    assert (grant.by, grant.reference) == (ORIGIN_UPDATE, "manifest digest")
    assert ModelStore(tmp_path / "store").check_activation("1.0.0", v1.sha256).rollback == grant
    store.activate(v1)
    assert store.record("1.0.0").rollback is None
    with pytest.raises(PolicyError, match=r"installed before the active 1\.0\.0"):
        store.check_activation("2.0.0", v2.sha256)  # superseded by the rollback


def test_a_rollback_is_authorised_only_for_an_intact_installed_version(tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PolicyError, match="not installed"):
        store.authorise_rollback("1.0.0", ORIGIN_OPERATOR)
    _installed(store, tmp_path, "1.0.0")
    (store.path("1.0.0") / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="damaged"):
        store.authorise_rollback("1.0.0", ORIGIN_OPERATOR)
    with pytest.raises(StoreError, match="authorised by"):
        store.authorise_rollback("1.0.0", ORIGIN_PARAMS)
    assert store.record("1.0.0").rollback is None


def test_fresh_installs_survive_pruning_and_a_restart_discard_spares_the_active(tmp_path):
    store = ModelStore(tmp_path / "store", keep=1)
    v1 = _installed(store, tmp_path, "1.0.0")
    store.activate(v1)
    v2 = _installed(store, tmp_path, "2.0.0", gain=3.0)
    store.activate(v2)  # keep=1: 1.0.0 goes
    v3 = _installed(store, tmp_path, "3.0.0", gain=4.0)  # waiting for its load_model call
    store.activate(v2)  # inference restarted on the active version meanwhile
    assert store.versions() == ["2.0.0", "3.0.0"] and set(store.records()) == {"2.0.0", "3.0.0"}
    store.check_activation("3.0.0", v3.sha256)  # still fresh
    with pytest.raises(StoreError, match="is the active model"):
        store.discard("2.0.0")
    store.discard("3.0.0")  # e.g. its load failed
    assert store.versions() == ["2.0.0"] and set(store.records()) == {"2.0.0"}
