"""Loading model packages (ModelManager, no ROS): verification, self-test, store, restart on the last good
model, and every way a package can be bad - each refused with a clear reason while the old model serves.
A load request takes only packages of the model store that its policy allows (installed by a verified update,
not older than the active one unless a rollback to it is authorised)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import pytest

from qc_cell.inference.backends import BackendOptions, resolve_backend
from qc_cell.inference.hot_swap import ACTIVE, FAILED, LOADING, NONE, ModelManager, ModelState
from qc_cell.inference.model_store import ORIGIN_OPERATOR, ORIGIN_PARAMS, ORIGIN_UPDATE, ModelStore
from qc_cell.inference.pipeline import FrameJob, InferencePipeline
from qc_cell.inference.synthetic_models import uniform_image, write_package
from qc_contract.model_manifest import GoldenItem, Manifest, sha256_file


class Harness:
    def __init__(self, store_dir=None, require_golden_set=False) -> None:
        self.states: list[ModelState] = []
        self.pipeline = InferencePipeline(lambda outcome: None)
        self.store = ModelStore(store_dir) if store_dir else None
        self.manager = ModelManager(
            self.pipeline,
            resolve_backend("onnxruntime", "fp32"),
            BackendOptions(max_batch=2),
            self.store,
            require_golden_set,
            on_state=self.states.append,
        )

    @property
    def serving(self) -> str:
        return self.pipeline.model.version if self.pipeline.model else ""

    def install(self, package) -> str:
        """The package installed into the store as the cloud_bridge's verified update path does; its store path."""
        return str(self.store.install(package, Manifest.load(package), ORIGIN_UPDATE, "test"))


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(**kw) -> Harness:
        h = Harness(**kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.pipeline.stop()


def test_load_verifies_self_tests_swaps_and_activates(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    manifest = write_package(tmp_path / "pkg", "1.0.0")
    result = h.manager.load(h.install(tmp_path / "pkg"), "1.0.0", manifest.sha256)
    assert result.success, result.message
    assert result.active_version == h.serving == "1.0.0"
    assert "golden set 2/2 within 0.02" in result.message and "onnxruntime" in result.message
    assert [s.state for s in h.states] == [LOADING, ACTIVE]
    active = h.states[-1]
    assert (active.version, active.sha256, active.backend, active.precision) == (
        "1.0.0",
        manifest.sha256,
        "onnxruntime",
        "fp32",
    )
    assert h.store.active().version == "1.0.0"
    assert h.pipeline.model.package_dir == h.store.path("1.0.0")  # serves from the verified copy


def test_manifest_file_path_is_accepted_too(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "pkg", "1.0.0")
    assert h.manager.load(h.install(tmp_path / "pkg") + "/manifest.json").success


def test_a_version_of_the_store_can_be_named_without_a_path(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "pkg", "1.0.0")
    h.install(tmp_path / "pkg")
    assert h.manager.load("", "1.0.0").success and h.serving == "1.0.0"


def _damage(package, how: str) -> None:
    model = package / "model.onnx"
    manifest = json.loads((package / "manifest.json").read_text())
    if how == "truncated_model":
        model.write_bytes(model.read_bytes()[:100])
    elif how == "corrupt_model_with_matching_manifest":  # exporter wrote garbage and hashed it
        model.write_bytes(b"\x08\x07garbage" * 40)
        manifest.update(sha256=sha256_file(model), size_bytes=model.stat().st_size)
    elif how == "golden_mismatch":
        manifest["golden"][1]["score"] = 0.2
    elif how == "missing_golden_image":
        (package / manifest["golden"][0]["file"]).unlink()
    elif how == "golden_outside_package":
        manifest["golden"][0]["file"] = "../../etc/passwd"
    elif how == "wrong_input_shape":
        manifest["preprocessing"]["input_height"] = 64
    elif how == "unknown_output":
        manifest["output"]["name"] = "prob"
    elif how == "softmax_on_single_logit":
        manifest["output"]["semantics"] = "softmax"
    elif how == "bad_manifest_json":
        (package / "manifest.json").write_text("{not json")
        return
    elif how == "no_manifest":
        (package / "manifest.json").unlink()
        return
    (package / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated_model", "bytes, manifest says"),
        ("corrupt_model_with_matching_manifest", "onnxruntime cannot load model.onnx"),
        ("golden_mismatch", "golden-set self-test failed on 1/2"),
        ("missing_golden_image", "golden image golden/level_040.png missing"),
        ("golden_outside_package", "points outside the package"),
        ("wrong_input_shape", r"manifest says \(N, 3, 64, 32\)"),
        ("unknown_output", "no output 'prob'"),
        ("softmax_on_single_logit", "softmax semantics need >= 2"),
        ("bad_manifest_json", "unreadable manifest"),
        ("no_manifest", "no manifest at"),
    ],
)
def test_a_bad_package_is_refused_and_the_old_model_keeps_serving(tmp_path, harness, how, message):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "good", "1.0.0")
    assert h.manager.load(h.install(tmp_path / "good")).success
    write_package(tmp_path / "bad", "2.0.0", gain=3.0)
    if how in ("truncated_model", "bad_manifest_json", "no_manifest"):
        bad = h.install(tmp_path / "bad")  # the store's copy damaged afterwards (disk error, tampering)
        _damage(Path(bad), how)
    else:
        _damage(tmp_path / "bad", how)  # signed and consistent, yet bad: the self-test is the last line
        bad = h.install(tmp_path / "bad")
    result = h.manager.load(bad)
    assert not result.success
    assert result.message.startswith(f"load of {bad} failed: ")
    assert re.search(message, result.message), result.message
    assert "model 1.0.0 keeps serving" in result.message
    assert result.active_version == h.serving == "1.0.0"
    assert h.states[-1].state == FAILED and h.states[-1].version == "1.0.0"
    assert h.store.active().version == "1.0.0" and h.store.active().history == ()  # the pointer never moved


def test_requested_version_and_sha256_must_match(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    manifest = write_package(tmp_path / "pkg", "1.0.0")
    installed = h.install(tmp_path / "pkg")
    wrong_version = h.manager.load(installed, "1.0.1", "")
    assert not wrong_version.success and "holds version 1.0.0, 1.0.1 was requested" in wrong_version.message
    wrong_sha = h.manager.load(installed, "", "f" * 64)
    assert not wrong_sha.success and "is not the requested" in wrong_sha.message
    assert h.manager.load(installed, "1.0.0", manifest.sha256.upper()).success


def test_missing_directory_and_empty_path(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    assert "does not exist" in h.manager.load(str(h.store.path("9.9.9"))).message
    assert "no package path" in h.manager.load("").message
    assert h.states[-1].state == FAILED and h.states[-1].version == ""


def test_nan_on_the_golden_set_fails_the_self_test(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    manifest = write_package(tmp_path / "pkg", "nan.1", kind="nan_when_dark", golden_levels=(200,))
    cv2.imwrite(str(tmp_path / "pkg" / "golden" / "dark.png"), uniform_image(0))  # the model gives NaN here
    dark = GoldenItem(file="golden/dark.png", score=0.1)
    replace(manifest, golden=(*manifest.golden, dark)).write(tmp_path / "pkg")
    result = h.manager.load(h.install(tmp_path / "pkg"))
    assert not result.success and "golden/dark.png: nan_output" in result.message


def test_require_golden_set(tmp_path, harness):
    write_package(tmp_path / "pkg", "1.0.0", golden_levels=())
    lenient = harness(store_dir=tmp_path / "a", require_golden_set=False)
    assert lenient.manager.load(lenient.install(tmp_path / "pkg")).success
    strict = harness(store_dir=tmp_path / "b", require_golden_set=True)
    result = strict.manager.load(strict.install(tmp_path / "pkg"))
    assert not result.success and "no golden set and require_golden_set is on" in result.message


def test_restart_comes_back_on_the_last_good_model(tmp_path, harness):
    store_dir = tmp_path / "store"
    first = harness(store_dir=store_dir)
    write_package(tmp_path / "v1", "1.0.0")
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    write_package(tmp_path / "v3", "3.0.0", gain=4.0)
    _damage(tmp_path / "v3", "golden_mismatch")
    assert first.manager.load(first.install(tmp_path / "v1")).success
    assert first.manager.load(first.install(tmp_path / "v2")).success
    assert not first.manager.load(first.install(tmp_path / "v3")).success
    first.pipeline.stop()
    # Restart with model_path still pointing at the original v1: the store's v2 wins.
    restarted = harness(store_dir=store_dir)
    result = restarted.manager.load_initial(str(tmp_path / "v1"))
    assert result.success and restarted.serving == "2.0.0"


def test_restart_falls_back_when_the_active_copy_is_damaged(tmp_path, harness):
    store_dir = tmp_path / "store"
    first = harness(store_dir=store_dir)
    for version, gain in (("1.0.0", 2.0), ("2.0.0", 3.0)):
        write_package(tmp_path / version, version, gain=gain)
        assert first.manager.load(first.install(tmp_path / version)).success
    first.pipeline.stop()
    (store_dir / "versions" / "2.0.0" / "model.onnx").write_bytes(b"disk error")
    restarted = harness(store_dir=store_dir)
    result = restarted.manager.load_initial("")
    assert result.success and restarted.serving == "1.0.0"


def test_initial_load_without_anything_leaves_no_model_with_a_reason(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    result = h.manager.load_initial("")
    assert not result.success and h.states[-1].state == NONE
    assert "model_path is empty and the store holds none" in result.message
    failed = harness().manager.load_initial(str(tmp_path / "missing"))
    assert not failed.success and "does not exist" in failed.message and "NOT_INSPECTED" in failed.message


def test_one_load_at_a_time(tmp_path, harness, monkeypatch):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "pkg", "1.0.0")
    package = h.install(tmp_path / "pkg")
    gate, entered = threading.Event(), threading.Event()
    original = h.manager._bring_up

    def slow_bring_up(*args):
        entered.set()
        gate.wait(10)
        return original(*args)

    monkeypatch.setattr(h.manager, "_bring_up", slow_bring_up)
    results = []
    worker = threading.Thread(target=lambda: results.append(h.manager.load(package)))
    worker.start()
    assert entered.wait(10)
    busy = h.manager.load(package)
    gate.set()
    worker.join(10)
    assert not busy.success and "another model load is in progress" in busy.message
    assert results[0].success


def test_the_old_model_keeps_scoring_while_a_load_runs(tmp_path, harness, monkeypatch):
    h = harness(store_dir=tmp_path / "store")
    outcomes = []
    h.pipeline._publish = outcomes.append  # collect what the worker answers
    h.pipeline.start()
    write_package(tmp_path / "v1", "1.0.0")
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    assert h.manager.load(h.install(tmp_path / "v1")).success
    v2 = h.install(tmp_path / "v2")
    gate, entered = threading.Event(), threading.Event()
    original = h.manager._bring_up

    def slow_bring_up(*args):
        entered.set()
        assert gate.wait(10)
        return original(*args)

    monkeypatch.setattr(h.manager, "_bring_up", slow_bring_up)
    loader = threading.Thread(target=h.manager.load, args=(v2,))
    loader.start()
    assert entered.wait(10)
    image = uniform_image(120)
    for i in range(5):
        h.pipeline.submit(FrameJob(f"during-{i}", time.monotonic_ns(), lambda: (image, "BGR")))
    end = time.monotonic() + 10
    while len(outcomes) < 5 and time.monotonic() < end:
        time.sleep(0.01)
    assert [(o.ok, o.model_version) for o in outcomes] == [(True, "1.0.0")] * 5  # scored while loading
    assert h.states[-1].state == LOADING
    gate.set()
    loader.join(10)
    assert h.serving == "2.0.0" and h.states[-1].state == ACTIVE


def test_an_unexpected_error_during_a_load_is_reported_not_raised(tmp_path, harness, monkeypatch):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "v1", "1.0.0")
    write_package(tmp_path / "v2", "2.0.0")
    assert h.manager.load(h.install(tmp_path / "v1")).success
    v2 = h.install(tmp_path / "v2")

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(h.manager, "_bring_up", broken)
    result = h.manager.load(v2)
    assert not result.success and "RuntimeError: disk on fire" in result.message
    assert h.serving == "1.0.0" and h.states[-1].state == FAILED


# ---- the model policy (issue 18: inference enforces it itself) ----------------------------------------------


def test_a_package_outside_the_store_is_refused(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "pkg", "1.0.0")
    (h.store.versions_dir / "2.0.0").symlink_to(tmp_path / "pkg")  # a link out of the store is outside too
    for path in (tmp_path / "pkg", h.store.versions_dir / ".." / ".." / "pkg", h.store.versions_dir / "2.0.0"):
        result = h.manager.load(str(path))
        assert not result.success and "is not a package in the model store" in result.message, result.message
    assert h.serving == "" and h.store.active() is None


def test_without_a_store_nothing_is_loaded_on_request(tmp_path, harness):
    h = harness()
    write_package(tmp_path / "pkg", "1.0.0")
    result = h.manager.load(str(tmp_path / "pkg"))
    assert not result.success and "no model store" in result.message and h.serving == ""


def test_going_back_needs_a_rollback_naming_the_version_and_the_grant_is_used_up(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "v1", "1.0.0")
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    v1 = h.install(tmp_path / "v1")
    assert h.manager.load(v1).success
    v2 = h.install(tmp_path / "v2")
    assert h.manager.load(v2).success
    back = h.manager.load(v1)  # still on the device: what an attacker on the graph asked for
    assert not back.success and "installed before the active 2.0.0 was activated" in back.message, back.message
    assert h.serving == "2.0.0" and h.store.active().version == "2.0.0"
    h.store.authorise_rollback("1.0.0", ORIGIN_UPDATE, "digest-of-the-signed-rollback")
    assert h.manager.load(v1).success and h.serving == "1.0.0"
    assert h.store.record("1.0.0").rollback is None  # used up
    forward = h.manager.load(v2)  # superseded by the rollback: it does not come back by a request alone
    assert not forward.success and "installed before the active 1.0.0" in forward.message
    assert h.manager.load(v1, "1.0.0").success  # the active version itself may be loaded again


def test_an_older_fresh_install_is_refused_unless_pinned(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "v2", "2.0.0")
    write_package(tmp_path / "v15", "1.5.0", gain=3.0)
    assert h.manager.load(h.install(tmp_path / "v2")).success
    older = h.manager.load(h.install(tmp_path / "v15"))
    assert not older.success and "1.5.0 is older than the active 2.0.0" in older.message
    h.store.authorise_rollback("1.5.0", ORIGIN_OPERATOR, "operator pin")
    assert h.manager.load(str(h.store.path("1.5.0"))).success and h.serving == "1.5.0"


def test_a_fresh_install_of_another_naming_scheme_is_loaded(tmp_path, harness):
    """The demo's 'demo-lite0-2' then a signed '1.1.0': not ordered by name, the install order decides."""
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "demo", "demo-lite0-2")
    write_package(tmp_path / "v11", "1.1.0", gain=3.0)
    assert h.manager.load_initial(str(tmp_path / "demo")).success
    assert h.manager.load(h.install(tmp_path / "v11")).success and h.serving == "1.1.0"
    assert not h.manager.load(str(h.store.path("demo-lite0-2"))).success  # and not back


def test_a_package_changed_in_the_store_after_its_install_is_refused(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    write_package(tmp_path / "v1", "1.0.0")
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    assert h.manager.load(h.install(tmp_path / "v1")).success
    v2 = Path(h.install(tmp_path / "v2"))
    _damage(v2, "corrupt_model_with_matching_manifest")  # rewritten in place, manifest hash updated to match
    result = h.manager.load(str(v2))
    assert not result.success and "the package changed after its install" in result.message, result.message


def test_the_params_model_enters_the_store_at_the_first_start(tmp_path, harness):
    h = harness(store_dir=tmp_path / "store")
    manifest = write_package(tmp_path / "initial", "1.0.0")
    assert h.manager.load_initial(str(tmp_path / "initial")).success
    record = h.store.record("1.0.0")
    assert (record.origin, record.sha256, record.reference) == (
        ORIGIN_PARAMS,
        manifest.sha256,
        str(tmp_path / "initial"),
    )
    assert h.store.active().version == "1.0.0" and h.pipeline.model.package_dir == h.store.path("1.0.0")
