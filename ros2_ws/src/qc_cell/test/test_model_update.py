"""Signed model updates, core pipeline (plain pytest, real Ed25519, real packages and tar.gz artifacts):
every attack is rejected with its reason before anything reaches load_model, nothing partial is left
behind, and a good update (by URL, by HTTP, or in chunks over MQTT) goes to load_model and is remembered."""

from __future__ import annotations

import http.server
import io
import json
import random
import tarfile
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qc_cell.bridge.model_updater import ModelUpdater, UpdateOutcome, UpdateSettings
from qc_cell.inference.model_store import ORIGIN_OPERATOR, ModelStore, PolicyError
from qc_cell.inference.synthetic_models import write_package
from qc_contract import artifact, update_manifest
from qc_contract.model_manifest import Manifest

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
# The fixtures serve artifacts from files and a local http server; the default policy (https only) is
# tested in test_update_security.py.
TEST_FETCH = artifact.FetchPolicy(schemes=frozenset({"file", "http", "https"}), read_timeout_s=10.0, deadline_s=60.0)
HOUR_NS = 3600 * 10**9


class Harness:
    """A ModelUpdater with a load_model that checks the package against the LoadModel contract."""

    def __init__(self, tmp: Path, load_ok: bool = True, **settings) -> None:
        self.tmp = tmp
        self.outcomes: list[UpdateOutcome] = []
        self.loads: list[tuple[str, str, str]] = []
        self.load_ok = load_ok
        settings.setdefault("fetch", TEST_FETCH)
        settings.setdefault("keys", {update_manifest.key_id(KEY.public_key()): KEY.public_key()})
        settings.setdefault("model_store_dir", tmp / "store")
        self.settings = UpdateSettings(update_dir=tmp / "updates", cell_path="plant1/line2/cell3", **settings)
        self.updater = ModelUpdater(self.settings, self._load, self.outcomes.append)
        self.updater.start()

    def _load(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        manifest = Manifest.load(Path(path))
        manifest.verify_model_file(Path(path))
        assert (manifest.version, manifest.sha256) == (version, sha256), "load_model got a mismatched request"
        try:
            self.store.check_activation(version, sha256)  # what the inference node checks before loading
        except PolicyError as refused:
            return False, str(refused), self.updater.active_version
        self.loads.append((path, version, sha256))
        if not self.load_ok:
            return False, "golden set failed", ""
        self.store.activate(manifest)  # what the inference node does once the model serves
        return True, f"serving {version}", version

    @property
    def store(self) -> ModelStore:
        return self.updater.store

    def send(self, manifest: dict | bytes, timeout: float = 10.0) -> UpdateOutcome:
        before = len(self.outcomes)
        payload = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        self.updater.submit_manifest(payload)
        end = time.monotonic() + timeout
        while len(self.outcomes) == before and time.monotonic() < end:
            time.sleep(0.01)
        assert len(self.outcomes) > before, "no outcome reported"
        return self.outcomes[-1]

    def leftovers(self, settle_s: float = 2.0) -> list[str]:
        """Partial downloads and staging folders left behind. The worker removes them right after it has reported
        the outcome (a `finally`), so a loaded machine gets a moment before the answer counts."""
        end = time.monotonic() + settle_s
        while True:
            partial = list((self.settings.update_dir / ".partial").iterdir())
            staging = list(self.settings.update_dir.glob(".staging-*"))
            if not (partial or staging) or time.monotonic() > end:
                return [p.name for p in partial + staging]
            time.sleep(0.02)

    def packages(self) -> list[str]:
        return sorted(p.name for p in self.settings.update_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def close(self) -> None:
        self.updater.stop()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def make_update(
    tmp: Path,
    version: str,
    *,
    key: Ed25519PrivateKey = KEY,
    package_version: str | None = None,
    chunks: int = 0,
    **manifest_fields,
) -> tuple[dict, Path]:
    """A model package -> tar.gz artifact -> signed manifest (file:// URL, or chunk description)."""
    package = tmp / f"pkg-{version}-{random.randrange(1 << 30)}"
    write_package(package, package_version or version)
    archive = tmp / f"{package.name}.tar.gz"
    size, sha = artifact.pack(package, archive)
    source = {"chunks": {"count": -(-size // chunks), "chunk_size": chunks}} if chunks else {"url": archive.as_uri()}
    now = time.time_ns()
    fields = {"version": version, "sha256": sha, "size": size, "artifact": source, "issued_ns": now,
              "expires_ns": now + HOUR_NS}  # fmt: skip
    fields.update(manifest_fields)
    return update_manifest.sign(update_manifest.build(**fields), key), archive


def test_a_good_update_is_verified_installed_and_remembered(harness, tmp_path):
    manifest, _ = make_update(tmp_path, "1.1.0")
    outcome = harness.send(manifest)
    assert (outcome.accepted, outcome.reason, outcome.active_version) == (True, "accepted", "1.1.0")
    path, version, _ = harness.loads[-1]
    assert Path(path) == harness.store.path("1.1.0") and version == "1.1.0"  # the store's verified copy
    assert (Path(path) / "model.onnx").is_file() and harness.leftovers() == []
    assert json.loads((harness.settings.update_dir / "update_state.json").read_text())["version"] == "1.1.0"
    # The retained manifest arrives again on every reconnect: recognised, not installed twice, not an error.
    harness.updater.submit_manifest(json.dumps(manifest).encode())
    time.sleep(0.3)
    assert len(harness.loads) == 1 and harness.updater.counts["duplicate"] == 1 and len(harness.outcomes) == 1


def _tamper(field: str, value):
    def apply(manifest: dict, archive: Path) -> dict:
        return {**manifest, field: value}

    return apply


def _rewrite_artifact(change):
    def apply(manifest: dict, archive: Path) -> dict:
        data = bytearray(archive.read_bytes())
        archive.write_bytes(bytes(change(data)))
        return manifest

    return apply


def _flip_middle_byte(data: bytearray) -> bytearray:
    data[len(data) // 2] ^= 0xFF
    return data


ATTACKS = {
    "bad_signature (version changed)": (_tamper("version", "9.0.0"), "bad_signature"),
    "bad_signature (hash changed)": (_tamper("sha256", "0" * 64), "bad_signature"),
    "bad_signature (artifact URL changed)": (_tamper("artifact", {"url": "file:///tmp/evil.tar.gz"}), "bad_signature"),
    "signature of garbage": (_tamper("signature", "A" * 86 + "=="), "bad_signature"),
    "hash_mismatch": (_rewrite_artifact(_flip_middle_byte), "hash_mismatch"),
    "truncated artifact": (_rewrite_artifact(lambda d: d[: len(d) // 2]), "truncated"),
    "oversized artifact": (_rewrite_artifact(lambda d: d + b"\0" * 100), "size_mismatch"),
    "unknown field": (_tamper("admin", True), "unknown_field"),
    "wrong schema version": (_tamper("schema_version", 2), "unsupported_schema_version"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_update_attack_is_rejected_with_its_reason(harness, tmp_path, attack):
    tamper, reason = ATTACKS[attack]
    manifest, archive = make_update(tmp_path, "1.2.0")
    outcome = harness.send(tamper(manifest, archive))
    assert (outcome.accepted, outcome.reason) == (False, reason), outcome.detail
    assert harness.loads == [] and harness.packages() == [] and harness.leftovers() == []
    assert harness.updater.counts[reason] == 1


def test_unknown_signing_key_is_rejected(harness, tmp_path):
    manifest, _ = make_update(tmp_path, "1.2.0", key=OTHER_KEY)
    assert harness.send(manifest).reason == "unknown_key"


def test_downgrade_and_replay_are_rejected(harness, tmp_path):
    old, _ = make_update(tmp_path, "1.9.0")
    new, _ = make_update(tmp_path, "1.10.0")  # natural order: 1.10 > 1.9
    assert harness.send(new).accepted
    assert harness.send(old).reason == "downgrade"
    resigned, _ = make_update(tmp_path, "1.10.0")  # same version, fresh signature: a replay
    assert harness.send(resigned).reason == "replay"
    assert [v for _, v, _ in harness.loads] == ["1.10.0"] and harness.packages() == ["1.10.0"]


def test_rollback_when_signed_as_one(harness, tmp_path):
    assert harness.send(make_update(tmp_path, "2.0.0")[0]).accepted
    assert harness.send(make_update(tmp_path, "1.0.0", rollback_from="2.0.0")[0]).accepted
    assert [v for _, v, _ in harness.loads] == ["2.0.0", "1.0.0"]


def _activate_by_hand(harness, tmp_path, version: str) -> None:
    """A model the operator installed and inference activated, outside the update path."""
    write_package(tmp_path / f"hand-{version}", version, gain=3.0)
    manifest = Manifest.load(tmp_path / f"hand-{version}")
    harness.store.install(tmp_path / f"hand-{version}", manifest, ORIGIN_OPERATOR)
    harness.store.activate(manifest)


def test_version_is_checked_against_the_running_model_too(harness, tmp_path):
    assert harness.send(make_update(tmp_path, "2.0.0")[0]).accepted  # the signed history: floor 2.0.0
    _activate_by_hand(harness, tmp_path, "3.0.0")  # the store's active version
    assert harness.send(make_update(tmp_path, "2.5.0")[0]).reason == "downgrade"
    _activate_by_hand(harness, tmp_path, "default")  # cannot be ordered: only our own signed history counts
    assert harness.send(make_update(tmp_path, "2.5.0")[0]).accepted


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"expires_ns": time.time_ns() - 10**9}, "expired"),
        ({"targets": ["plant1/line9/*"]}, "wrong_target"),
        ({"size": 10**12}, "too_large"),
    ],
)
def test_signed_constraints(harness, tmp_path, fields, reason):
    manifest, _ = make_update(tmp_path, "1.3.0", **fields)
    assert harness.send(manifest).reason == reason


def test_matching_target_is_accepted(harness, tmp_path):
    assert harness.send(make_update(tmp_path, "1.3.0", targets=["plant1/line2/*"])[0]).accepted


def test_package_that_does_not_match_the_update_is_rejected(harness, tmp_path):
    manifest, _ = make_update(tmp_path, "1.4.0", package_version="9.9.9")
    outcome = harness.send(manifest)
    assert outcome.reason == "package_mismatch" and harness.packages() == [] and harness.leftovers() == []


def _signed_archive(tmp: Path, members: dict[str, bytes], version: str) -> dict:
    archive = tmp / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fields = {"version": version, "sha256": artifact.sha256_of(archive), "size": archive.stat().st_size}
    now = time.time_ns()
    return update_manifest.sign(
        update_manifest.build(**fields, artifact={"url": archive.as_uri()}, issued_ns=now, expires_ns=now + HOUR_NS),
        KEY,
    )


def test_path_traversal_in_a_signed_artifact_is_refused(harness, tmp_path):
    outcome = harness.send(_signed_archive(tmp_path, {"../escaped.txt": b"x", "manifest.json": b"{}"}, "1.5.0"))
    assert outcome.reason == "bad_package" and not (harness.settings.update_dir / "escaped.txt").exists()
    assert harness.leftovers() == []


def test_signed_artifact_without_a_valid_package_is_refused(harness, tmp_path):
    assert harness.send(_signed_archive(tmp_path, {"manifest.json": b"{}"}, "1.5.0")).reason == "bad_package"


def test_load_failure_is_reported_and_the_update_can_be_retried(tmp_path):
    h = Harness(tmp_path, load_ok=False)
    try:
        manifest, _ = make_update(tmp_path, "1.6.0")
        outcome = h.send(manifest)
        assert (outcome.reason, h.packages(), h.updater.installed_version) == ("load_failed", [], "")
        h.load_ok = True
        assert h.send(manifest).accepted, "a manifest that failed to load is not a duplicate"
    finally:
        h.close()


def test_signed_but_unreachable_artifact(harness, tmp_path):
    manifest, _ = make_update(tmp_path, "1.6.5", artifact={"url": (tmp_path / "nowhere.tar.gz").as_uri()})
    assert harness.send(manifest).reason == "fetch_failed" and harness.leftovers() == []


def test_malformed_manifests(harness):
    for payload, reason in [
        (b"{", "malformed_json"),
        (b"x" * 20_000, "oversized"),
        (json.dumps({"schema_version": 1, "type": "model_update"}).encode(), "schema_violation"),
    ]:
        assert harness.send(payload).reason == reason
    assert harness.loads == []


def _submit_chunks(h: Harness, version: str, archive: Path, chunk_size: int, order: list[int]) -> None:
    data = archive.read_bytes()
    for index in order:
        h.updater.submit_chunk(version, index, data[index * chunk_size : (index + 1) * chunk_size])


def test_chunked_update_out_of_order_with_duplicates(harness, tmp_path):
    manifest, archive = make_update(tmp_path, "1.7.0", chunks=1024)
    count = manifest["artifact"]["chunks"]["count"]
    harness.updater.submit_manifest(json.dumps(manifest).encode())
    order = [*range(count), 0, count - 1]
    random.Random(1).shuffle(order)
    _submit_chunks(harness, "1.7.0", archive, 1024, order)
    end = time.monotonic() + 10
    while not harness.outcomes and time.monotonic() < end:
        time.sleep(0.01)
    assert harness.outcomes and harness.outcomes[-1].accepted, harness.outcomes
    assert harness.leftovers() == []


def test_incomplete_and_bad_chunks_are_rejected(tmp_path):
    h = Harness(tmp_path, chunk_timeout_s=0.5)
    try:
        manifest, archive = make_update(tmp_path, "1.8.0", chunks=1024)
        count = manifest["artifact"]["chunks"]["count"]
        h.updater.submit_manifest(json.dumps(manifest).encode())
        _submit_chunks(h, "1.8.0", archive, 1024, list(range(count - 1)))  # the last one never comes
        end = time.monotonic() + 5
        while not h.outcomes and time.monotonic() < end:
            time.sleep(0.02)
        assert h.outcomes[-1].reason == "incomplete_artifact" and h.leftovers() == []

        manifest, archive = make_update(tmp_path, "1.8.1", chunks=1024)
        h.updater.submit_manifest(json.dumps(manifest).encode())
        h.updater.submit_chunk("1.8.1", 0, b"short")
        end = time.monotonic() + 5
        while len(h.outcomes) < 2 and time.monotonic() < end:
            time.sleep(0.02)
        assert h.outcomes[-1].reason == "bad_chunk" and h.leftovers() == [] and h.loads == []
    finally:
        h.close()


class _ArtifactServer(http.server.BaseHTTPRequestHandler):
    archive: Path
    lie_about_length = False

    def do_GET(self) -> None:
        data = self.archive.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) + (1000 if self.lie_about_length else 0)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("lie", [False, True], ids=["good", "connection_dropped"])
def test_http_artifact(harness, tmp_path, lie):
    manifest, archive = make_update(tmp_path, "2.1.0")
    handler = type("Handler", (_ArtifactServer,), {"archive": archive, "lie_about_length": lie})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        fields = {k: manifest[k] for k in ("version", "sha256")}
        size = manifest["size"] + (1000 if lie else 0)  # the lying server's artifact claims to be bigger
        signed = update_manifest.sign(
            update_manifest.build(
                **fields,
                size=size,
                artifact={"url": url},
                issued_ns=time.time_ns(),
                expires_ns=time.time_ns() + HOUR_NS,
            ),
            KEY,
        )
        outcome = harness.send(signed)
    finally:
        server.shutdown()
    if lie:
        assert outcome.reason in ("fetch_failed", "truncated") and harness.packages() == []
    else:
        assert outcome.accepted, outcome.detail
    assert harness.leftovers() == []


def test_leftovers_of_a_crash_are_cleaned_at_start(tmp_path):
    partial = tmp_path / "updates" / ".partial"
    partial.mkdir(parents=True)
    (partial / "3.0.0.abcd.part").write_bytes(b"half a download")
    (tmp_path / "updates" / ".staging-3.0.0-abcd").mkdir()
    h = Harness(tmp_path)
    try:
        assert h.leftovers() == []
    finally:
        h.close()


def test_version_order_is_natural():
    assert update_manifest.compare_versions("1.10.0", "1.9.0") == 1
    assert update_manifest.compare_versions("efficientnet_b0-20250101T000000Z", "efficientnet_b0-20241231T235959Z") == 1
    assert update_manifest.compare_versions("2.0", "2.0") == 0
