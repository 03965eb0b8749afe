"""Shadow runs, cores without ROS: the model store's shadow pointer and stored copies, the signed update path
for role shadow (verified like a live update, refused when the role was forged), promotion and rollback from the
store's copy without a download, the spare-time budget, and a shadow model scoring beside a live pipeline that
publishes every live result first and never changes one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_model_update import HOUR_NS, KEY, Harness, make_update

from qc_cell.inference.backends import BackendOptions, resolve_backend
from qc_cell.inference.hot_swap import ModelManager
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore, PolicyError
from qc_cell.inference.pipeline import FrameJob, InferencePipeline
from qc_cell.inference.shadow import ShadowBudget, ShadowRunner
from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_contract import update_manifest
from qc_contract.model_manifest import Manifest


# ---- model store ---------------------------------------------------------------------------------------
def _install(store: ModelStore, tmp: Path, version: str, gain: float = 2.0, artifact_sha256: str = "") -> Manifest:
    write_package(tmp / f"pkg-{version}", version, gain=gain)
    manifest = Manifest.load(tmp / f"pkg-{version}")
    store.install(tmp / f"pkg-{version}", manifest, ORIGIN_UPDATE, "test", artifact_sha256)
    return manifest


def test_store_shadow_pointer_survives_a_restart_is_kept_and_ends_at_promotion(tmp_path):
    store = ModelStore(tmp_path / "store", keep=1)
    live = _install(store, tmp_path, "1.0.0")
    store.activate(live)
    shadow = _install(store, tmp_path, "2.0.0", gain=3.0)
    store.set_shadow(shadow)
    again = ModelStore(tmp_path / "store", keep=1)  # a restart
    assert again.shadow().version == "2.0.0" and again.shadow().sha256 == shadow.sha256
    # Another activation in between (keep=1 prunes everything but the active one) keeps the shadow's copy,
    # and a live load of the shadow version later is allowed although it was installed before that activation.
    store.activate(live)
    assert (store.path("2.0.0") / "model.onnx").is_file()
    assert store.check_activation("2.0.0", shadow.sha256).version == "2.0.0"
    store.activate(shadow)  # promoted
    assert store.shadow() is None and store.active().version == "2.0.0"


def test_store_refuses_a_shadow_it_does_not_hold_or_with_another_model(tmp_path):
    store = ModelStore(tmp_path / "store")
    manifest = _install(store, tmp_path, "1.0.0")
    with pytest.raises(PolicyError, match="not in the model store"):
        store.check_shadow("9.9.9", manifest.sha256)
    with pytest.raises(PolicyError, match="names model sha256"):
        store.check_shadow("1.0.0", "0" * 64)


def test_stored_copy_needs_the_same_signed_artifact_and_an_intact_copy(tmp_path):
    store = ModelStore(tmp_path / "store")
    _install(store, tmp_path, "1.0.0", artifact_sha256="ab" * 32)
    _install(store, tmp_path, "1.1.0")  # hand-installed: no artifact recorded
    assert store.stored_copy("1.0.0", "AB" * 32) == store.path("1.0.0")
    assert store.stored_copy("1.0.0", "cd" * 32) is None  # another artifact of that version: download it
    assert store.stored_copy("1.1.0", "ab" * 32) is None
    assert store.stored_copy("7.0.0", "ab" * 32) is None
    (store.path("1.0.0") / "model.onnx").write_bytes(b"damaged")
    assert store.stored_copy("1.0.0", "ab" * 32) is None


# ---- the signed update path ------------------------------------------------------------------------------
class ShadowHarness(Harness):
    """The update harness with an inference/load_shadow that does what the inference node does."""

    def __init__(self, tmp: Path, shadow: bool = True) -> None:
        self.shadow_loads: list[tuple[str, str, str]] = []
        super().__init__(tmp)
        if shadow:
            self.updater.load_shadow = self._load_shadow

    def _load_shadow(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        manifest = Manifest.load(Path(path))
        try:
            self.store.check_shadow(version, sha256)
        except PolicyError as refused:
            return False, str(refused), self.updater.active_version
        self.shadow_loads.append((path, version, sha256))
        self.store.set_shadow(manifest)
        return True, f"shadow {version}", self.updater.active_version


@pytest.fixture
def shadow_harness(tmp_path):
    h = ShadowHarness(tmp_path)
    yield h
    h.close()


def _resign_from(manifest: dict, **changes) -> dict:
    """A new signed manifest for the same artifact (sha256, size, location), e.g. its promotion or a rollback."""
    now = time.time_ns()
    fields = {"version": manifest["version"], "sha256": manifest["sha256"], "size": manifest["size"],
              "artifact": manifest["artifact"], "issued_ns": now, "expires_ns": now + HOUR_NS}  # fmt: skip
    fields.update(changes)
    return update_manifest.sign(update_manifest.build(**fields), KEY)


def test_a_shadow_update_is_installed_beside_the_live_model_and_promoted_without_a_download(shadow_harness, tmp_path):
    h = shadow_harness
    assert h.send(make_update(tmp_path, "1.0.0")[0]).accepted
    shadow, archive = make_update(tmp_path, "1.1.0", role=update_manifest.ROLE_SHADOW)
    outcome = h.send(shadow)
    assert (outcome.accepted, outcome.role, outcome.active_version) == (True, "shadow", "1.0.0")
    assert [v for _, v, _ in h.shadow_loads] == ["1.1.0"] and [v for _, v, _ in h.loads] == ["1.0.0"]
    assert h.store.shadow().version == "1.1.0" and h.store.active().version == "1.0.0"
    state = json.loads((h.settings.update_dir / "update_state.json").read_text())
    assert state["high_water"] == "1.0.0" and state["shadow_version"] == "1.1.0"  # the floor did not move
    # The shadow manifest again (retained, redelivered): a duplicate, nothing reloaded.
    h.updater.submit_manifest(json.dumps(shadow).encode())
    time.sleep(0.3)
    assert h.updater.counts["duplicate"] == 1 and len(h.shadow_loads) == 1
    # Promotion: a live update of the same version and artifact. The artifact is gone: the store's copy is used.
    archive.unlink()
    outcome = h.send(_resign_from(shadow))
    assert (outcome.accepted, outcome.role, outcome.from_store, outcome.active_version) == (
        True,
        "live",
        True,
        "1.1.0",
    )
    assert h.loads[-1][0] == str(h.store.path("1.1.0")) and h.store.shadow() is None
    assert h.updater.counts["from_store"] == 1


def test_a_forged_shadow_marker_is_refused(shadow_harness, tmp_path):
    h = shadow_harness
    assert h.send(make_update(tmp_path, "1.0.0")[0]).accepted
    live, _ = make_update(tmp_path, "1.1.0")
    added = {**live, "role": "shadow"}  # the marker added after signing
    assert h.send(added).reason == "bad_signature"
    shadow, _ = make_update(tmp_path, "1.2.0", role=update_manifest.ROLE_SHADOW)
    flipped = {**shadow, "role": "live"}  # a signed shadow turned live
    assert h.send(flipped).reason == "bad_signature"
    dropped = {k: v for k, v in shadow.items() if k != "role"}  # ... or its marker removed
    assert h.send(dropped).reason == "bad_signature"
    unknown = update_manifest.sign({**update_manifest.build(**_fields(live)), "role": "canary"}, KEY)
    assert not h.send(unknown).accepted  # not a role the schema knows
    shadow_rollback = {**update_manifest.build(**_fields(live), rollback_from="1.0.0"), "role": "shadow"}
    refused = h.send(update_manifest.sign(shadow_rollback, KEY))  # signed, but no shadow is a rollback
    assert not refused.accepted and refused.reason in ("schema_violation", "rollback_mismatch"), refused
    assert h.shadow_loads == [] and [v for _, v, _ in h.loads] == ["1.0.0"] and h.store.shadow() is None
    # the rollback marker is signed too: added to an older version's update, or moved to another version, refused
    older, _ = make_update(tmp_path, "0.9.0")
    assert h.send({**older, "rollback_from": "1.0.0"}).reason == "bad_signature"
    rollback, _ = make_update(tmp_path, "0.8.0", rollback_from="1.0.0")
    assert h.send({**rollback, "rollback_from": "1.1.0"}).reason == "bad_signature"
    assert h.send({k: v for k, v in rollback.items() if k != "rollback_from"}).reason == "bad_signature"
    assert [v for _, v, _ in h.loads] == ["1.0.0"]


def _fields(manifest: dict) -> dict:
    now = time.time_ns()
    return {"version": manifest["version"], "sha256": manifest["sha256"], "size": manifest["size"],
            "artifact": manifest["artifact"], "issued_ns": now, "expires_ns": now + HOUR_NS}  # fmt: skip


def test_a_shadow_update_is_checked_like_a_live_one(shadow_harness, tmp_path):
    h = shadow_harness
    assert h.send(make_update(tmp_path, "2.0.0")[0]).accepted
    old = make_update(tmp_path, "1.5.0", role=update_manifest.ROLE_SHADOW)[0]
    assert h.send(old).reason == "downgrade"
    expired = make_update(tmp_path, "2.1.0", role="shadow", expires_ns=time.time_ns() - HOUR_NS)[0]
    assert h.send(expired).reason == "expired"
    elsewhere = make_update(tmp_path, "2.2.0", role="shadow", targets=["plant9/*/*"])[0]
    assert h.send(elsewhere).reason == "wrong_target"
    manifest, archive = make_update(tmp_path, "2.3.0", role="shadow")
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    assert h.send(manifest).reason == "hash_mismatch"
    assert h.shadow_loads == [] and h.store.record("2.3.0") is None


def test_a_cell_without_a_shadow_slot_refuses_shadow_updates(tmp_path):
    h = ShadowHarness(tmp_path, shadow=False)
    try:
        outcome = h.send(make_update(tmp_path, "1.0.0", role="shadow")[0])
        assert (outcome.accepted, outcome.reason) == (False, "shadow_unsupported") and h.loads == []
    finally:
        h.close()


def test_a_signed_rollback_uses_the_stored_copy_without_a_download(shadow_harness, tmp_path):
    h = shadow_harness
    first, first_archive = make_update(tmp_path, "1.0.0")
    assert h.send(first).accepted
    assert h.send(make_update(tmp_path, "2.0.0")[0]).accepted
    first_archive.unlink()  # the rollback cannot download: only the store's copy can serve it
    outcome = h.send(_resign_from(first, rollback_from="2.0.0"))
    assert (outcome.accepted, outcome.from_store, outcome.active_version) == (True, True, "1.0.0")
    assert h.loads[-1][0] == str(h.store.path("1.0.0")) and h.updater.counts["from_store"] == 1
    # A rollback to a version the store does not hold from that artifact still downloads it.
    assert h.send(make_update(tmp_path, "2.5.0")[0]).accepted
    outcome = h.send(make_update(tmp_path, "2.4.0", rollback_from="2.5.0")[0])
    assert (outcome.accepted, outcome.from_store) == (True, False)


# ---- the budget ------------------------------------------------------------------------------------------
def test_budget_follows_the_measured_spare_time_and_probes_when_over_it():
    budget = ShadowBudget(spare_fraction=0.5, probe_every=5)
    assert budget.allows()  # nothing measured yet: one run measures the shadow
    for i in range(10):
        budget.observe_arrival(i * 100_000_000)  # a part every 100 ms
        budget.observe_live(20.0)
    budget.observe_shadow(30.0)
    assert budget.budget_ms() == pytest.approx(40.0) and budget.allows()  # (100 - 20) * 0.5
    budget.observe_shadow(300.0)
    budget.observe_shadow(300.0)
    budget.observe_shadow(300.0)
    assert [budget.allows() for _ in range(5)] == [False, False, False, False, True]
    capped = ShadowBudget(max_latency_ms=5.0)
    capped.observe_shadow(10.0)
    assert capped.budget_ms() == 5.0 and not capped.allows()


# ---- shadow beside a live pipeline -----------------------------------------------------------------------
class LivePipeline:
    def __init__(self, tmp: Path, budget: ShadowBudget | None = None) -> None:
        self.results, self.scores, self.order = [], [], []
        self.runner = ShadowRunner(self._on_score, lambda: self.pipeline.queue_depth(), budget)
        self.pipeline = InferencePipeline(
            self._on_result, queue_size=64, pixels_wanted=self.runner.wanted, after_publish=self.runner.offer
        )
        self.store = ModelStore(tmp / "store")
        self.manager = ModelManager(
            self.pipeline, resolve_backend("onnxruntime", "fp32"), BackendOptions(), self.store, shadow=self.runner
        )
        self.pipeline.start()
        # The live model, then the shadow's install (as the update path does it; the shadow scores the other way).
        for version, gain in (("1.0.0", 2.0), ("2.0.0", -2.0)):
            if self.store.record(version) is None:
                write_package(tmp / f"pkg-{version}", version, gain=gain)
                self.store.install(tmp / f"pkg-{version}", Manifest.load(tmp / f"pkg-{version}"), ORIGIN_UPDATE)
            if version == "1.0.0":
                assert self.manager.load_initial("").success or self.manager.load("", "1.0.0").success

    def _on_result(self, outcome) -> None:
        self.results.append(outcome)
        self.order.append(("live", outcome.job.part_id))

    def _on_score(self, score) -> None:
        self.scores.append(score)
        self.order.append(("shadow", score.part_id))

    def submit(self, part_id: str, level: int) -> None:
        image = uniform_image(level)
        self.pipeline.submit(FrameJob(part_id, time.monotonic_ns(), lambda: (image, "BGR")))

    def wait(self, predicate, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, "timed out"
            time.sleep(0.01)

    def close(self) -> None:
        self.pipeline.stop()
        self.runner.stop()


def test_the_shadow_scores_after_the_live_result_and_never_changes_it(tmp_path):
    # Every part must be scored here: a budget that always allows (the budget has its own test; on a loaded
    # machine a slow first shadow run measured against these parts' short gaps would skip one).
    live = LivePipeline(tmp_path, ShadowBudget(probe_every=1))
    try:
        result = live.manager.load_shadow("", "2.0.0")
        assert result.success, result.message
        assert live.store.shadow().version == "2.0.0"
        spec = Manifest.load(tmp_path / "pkg-1.0.0").preprocessing
        for i, level in enumerate((30, 220, 120)):
            live.submit(f"p{i}", level)
            live.wait(lambda i=i: len(live.results) > i)
            assert live.runner.wait_idle(10)
        assert [o.probability for o in live.results] == pytest.approx(
            [expected_probability(uniform_image(lv), spec, gain=2.0) for lv in (30, 220, 120)], abs=1e-4
        )
        assert [s.defect_probability for s in live.scores] == pytest.approx(
            [expected_probability(uniform_image(lv), spec, gain=-2.0) for lv in (30, 220, 120)], abs=1e-4
        )
        assert {(s.shadow_version, s.live_version) for s in live.scores} == {("2.0.0", "1.0.0")}
        for part in ("p0", "p1", "p2"):  # each live result went out before its shadow score
            assert live.order.index(("live", part)) < live.order.index(("shadow", part))
        assert live.runner.counts() == {"scored": 3}
        # Cleared: no more scores, the pointer is gone.
        assert live.manager.load_shadow("", "").success and live.store.shadow() is None
        live.submit("p3", 100)
        live.wait(lambda: len(live.results) == 4)
        assert live.runner.wait_idle(5) and len(live.scores) == 3
    finally:
        live.close()


def test_under_load_the_shadow_skips_parts_and_counts_why(tmp_path):
    live = LivePipeline(tmp_path)
    try:
        assert live.manager.load_shadow("", "2.0.0").success
        for i in range(40):  # a burst: frames wait for the live model
            live.submit(f"b{i}", 100 + i)
        live.wait(lambda: len(live.results) == 40)
        assert live.runner.wait_idle(10)
        counts = live.runner.counts()
        skipped = sum(v for k, v in counts.items() if k.startswith("skipped_"))
        assert counts.get("scored", 0) + skipped == 40, counts
        assert counts.get("skipped_frames_waiting", 0) + counts.get("skipped_busy", 0) > 0, counts
        assert all(o.ok for o in live.results) and [o.job.part_id for o in live.results] == [f"b{i}" for i in range(40)]
    finally:
        live.close()


def test_the_recorded_shadow_comes_back_after_a_restart_and_leaves_when_promoted(tmp_path):
    live = LivePipeline(tmp_path)
    try:
        assert live.manager.load_shadow("", "2.0.0").success
    finally:
        live.close()
    again = LivePipeline(tmp_path)  # same store: the restart
    try:
        result = again.manager.load_initial_shadow()
        assert result is not None and result.success and again.runner.version == "2.0.0"
        assert again.manager.load("", "2.0.0").success  # promotion
        assert again.runner.version == "" and again.store.shadow() is None
        assert not again.manager.load_shadow("", "2.0.0").success  # the live model is no shadow
    finally:
        again.close()
