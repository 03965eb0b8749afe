"""Issue 18, update policy and download/package: what an attacker who can publish to the broker, replay old
signed manifests, serve artifacts or sign a package could do before, and that the updater now refuses (plain
pytest, real Ed25519, real packages, real HTTP servers and FIFOs)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import external_data_helper
from test_model_update import HOUR_NS, KEY, TEST_FETCH, Harness, make_update

from qc_cell.inference.model_store import ORIGIN_OPERATOR, ORIGIN_UPDATE, ModelStore, StoreError
from qc_cell.inference.synthetic_models import write_package
from qc_contract import artifact, package_paths, update_manifest
from qc_contract.model_manifest import Manifest, sha256_file


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def versions_loaded(h: Harness) -> list[str]:
    return [v for _, v, _ in h.loads]


# ---- update policy ---------------------------------------------------------------------------------------------


def test_manifest_without_expiry_is_refused_unless_configured(tmp_path):
    manifest, _ = make_update(tmp_path, "1.0.0", expires_ns=0)
    h = Harness(tmp_path)
    try:
        assert h.send(manifest).reason == "no_expiry" and h.loads == []
    finally:
        h.close()
    h = Harness(tmp_path / "lenient", require_expiry=False)
    try:
        assert h.send(manifest).accepted
    finally:
        h.close()


def test_target_patterns_match_whole_path_segments(harness, tmp_path):
    assert not update_manifest.target_matches("plant1*", "plant10/line1/cell1"), "'*' must not cross '/'"
    assert not update_manifest.target_matches("plant1/*", "plant1/line1/cell1")
    assert update_manifest.target_matches("plant1*/*/cell?", "plant10/line1/cell1")
    outcome = harness.send(make_update(tmp_path, "1.0.0", targets=["plant1*"])[0])
    assert outcome.reason == "wrong_target" and harness.loads == []


def test_missing_replay_state_fails_closed_on_the_newest_installed_package(tmp_path):
    old, _ = make_update(tmp_path, "1.0.0")
    h = Harness(tmp_path)
    try:
        assert h.send(make_update(tmp_path, "2.0.0")[0]).accepted
    finally:
        h.close()
    (tmp_path / "updates" / "update_state.json").unlink()  # lost (disk swap, wiped by hand, ...)
    h = Harness(tmp_path)
    try:
        assert h.send(old).reason == "downgrade" and h.loads == []
    finally:
        h.close()


def test_missing_replay_state_uses_the_model_stores_newest_version(tmp_path):
    store = ModelStore(tmp_path / "store")
    for version in ("demo-lite0-2", "2.5.0", "3.0.0"):  # installed in the store, update_dir is fresh
        write_package(tmp_path / f"pkg-{version}", version)
        store.install(tmp_path / f"pkg-{version}", Manifest.load(tmp_path / f"pkg-{version}"), ORIGIN_OPERATOR)
    h = Harness(tmp_path, model_store_dir=store.root)
    try:
        assert h.send(make_update(tmp_path, "2.0.0")[0]).reason == "downgrade"
        assert h.send(make_update(tmp_path, "3.0.0")[0]).reason == "replay"
        assert h.send(make_update(tmp_path, "3.1.0")[0]).accepted
    finally:
        h.close()


def test_a_spoofed_model_active_topic_cannot_block_a_genuine_update(harness, tmp_path):
    """A spoofed model/active '999' made a genuine signed 3.0 fail as a downgrade. The updater cannot be told
    the active version any more: it reads the model store's pointer (written by inference)."""
    with pytest.raises(AttributeError):
        harness.updater.active_version = "999"  # what CloudLink.on_model did with model/active
    assert harness.send(make_update(tmp_path, "3.0.0")[0]).accepted
    assert harness.updater.active_version == "3.0.0" == harness.store.active().version
    assert harness.loads[-1][0] == str(harness.store.path("3.0.0"))  # load_model is given the store's copy


def test_old_signed_manifests_cannot_be_replayed_without_a_signed_rollback(harness, tmp_path):
    v1, _ = make_update(tmp_path, "1.0.0")
    v2, _ = make_update(tmp_path, "2.0.0")
    assert harness.send(v1).accepted and harness.send(v2).accepted
    assert harness.send(v1).reason == "downgrade"
    # A rollback names the exact version it rolls back from.
    wrong_origin, _ = make_update(tmp_path, "1.0.0", rollback_from="1.5.0")
    assert harness.send(wrong_origin).reason == "rollback_mismatch"
    upward, _ = make_update(tmp_path, "2.5.0", rollback_from="2.0.0")
    assert harness.send(upward).reason == "rollback_mismatch"
    rollback, _ = make_update(tmp_path, "1.0.0", rollback_from="2.0.0")
    assert harness.send(rollback).accepted
    # The bad 2.0 stays refused after the rollback (the floor is the newest ever installed) ...
    assert harness.send(v2).reason == "replay"
    assert harness.send(make_update(tmp_path, "3.0.0")[0]).accepted
    # ... and the rollback, replayed once 3.0 runs, no longer applies.
    assert harness.send(rollback).reason == "rollback_mismatch"
    assert versions_loaded(harness) == ["1.0.0", "2.0.0", "1.0.0", "3.0.0"]


def _digest(manifest: dict) -> str:
    """The signed manifest's identity (content and signature), as the store records it."""
    return hashlib.sha256(update_manifest.canonical_bytes(manifest) + manifest["signature"].encode()).hexdigest()


def test_a_rollback_is_granted_in_the_model_store_before_load_model(harness, tmp_path, monkeypatch):
    v1, _ = make_update(tmp_path, "1.0.0")
    assert harness.send(v1).accepted and harness.send(make_update(tmp_path, "2.0.0")[0]).accepted
    granted: list[tuple[str, ...]] = []
    grant = harness.store.authorise_rollback
    monkeypatch.setattr(harness.store, "authorise_rollback", lambda *args: granted.append(args) or grant(*args))
    rollback, _ = make_update(tmp_path, "1.0.0", rollback_from="2.0.0")
    # The harness's load_model runs the store's policy (check_activation), as inference does: the superseded
    # 1.0.0 loads only because the signed rollback was granted in the store before load_model.
    assert harness.send(rollback).accepted and versions_loaded(harness)[-1] == "1.0.0"
    assert granted == [("1.0.0", ORIGIN_UPDATE, _digest(rollback))]
    record = harness.store.record("1.0.0")
    assert (record.origin, record.reference) == (ORIGIN_UPDATE, _digest(v1))  # installed by the first update
    assert record.rollback is None and harness.store.active().version == "1.0.0", "the grant is used up"

    def refuse(version: str, by: str, reference: str = "") -> None:
        raise StoreError("store is read-only")

    monkeypatch.setattr(harness.store, "authorise_rollback", refuse)
    assert harness.send(make_update(tmp_path, "2.1.0")[0]).accepted
    outcome = harness.send(make_update(tmp_path, "1.1.0", rollback_from="2.1.0")[0])
    assert outcome.reason == "rollback_refused" and versions_loaded(harness)[-1] == "2.1.0"
    assert harness.store.record("1.1.0") is None, "the refused rollback's package left the store again"


def test_a_replayed_old_manifest_does_not_cancel_an_update_in_progress(harness, tmp_path):
    assert harness.send(make_update(tmp_path, "2.0.0")[0]).accepted
    manifest, archive = make_update(tmp_path, "3.0.0", chunks=1024)
    count = manifest["artifact"]["chunks"]["count"]
    harness.updater.submit_manifest(json.dumps(manifest).encode())
    data = archive.read_bytes()
    for index in range(count - 1):
        harness.updater.submit_chunk("3.0.0", index, data[index * 1024 : (index + 1) * 1024])
    assert harness.send(make_update(tmp_path, "1.0.0")[0]).reason == "downgrade"
    harness.updater.submit_chunk("3.0.0", count - 1, data[(count - 1) * 1024 :])
    end = time.monotonic() + 10
    while harness.outcomes[-1].version != "3.0.0" and time.monotonic() < end:
        time.sleep(0.02)
    assert harness.outcomes[-1].accepted and harness.updater.counts["superseded"] == 0


class _CountingServer(http.server.BaseHTTPRequestHandler):
    requests: list[str]
    body = b""
    drip_s = 0.0
    redirect_to = ""

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        for i in range(len(self.body)):
            if self.drip_s:
                time.sleep(self.drip_s)
            try:
                self.wfile.write(self.body[i : i + 1] if self.drip_s else self.body)
                self.wfile.flush()
            except OSError:
                return
            if not self.drip_s:
                return

    def log_message(self, *args) -> None:
        pass


def serve(**attrs) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    requests: list[str] = []
    handler = type("Handler", (_CountingServer,), {"requests": requests, **attrs})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


def signed_for_url(tmp: Path, version: str, url: str) -> tuple[dict, Path]:
    """A real package's artifact, signed as served from url (the caller serves the archive there)."""
    manifest, archive = make_update(tmp, version)
    return resign_for_url(manifest, url), archive


def resign_for_url(manifest: dict, url: str) -> dict:
    now = time.time_ns()
    build = {"version": manifest["version"], "sha256": manifest["sha256"], "size": manifest["size"],
             "issued_ns": now, "expires_ns": now + HOUR_NS}  # fmt: skip
    return update_manifest.sign(update_manifest.build(artifact={"url": url}, **build), KEY)


def test_the_version_is_checked_before_any_byte_is_downloaded(harness, tmp_path):
    assert harness.send(make_update(tmp_path, "2.0.0")[0]).accepted
    server, requests = serve(body=b"x" * 100)
    try:
        manifest, _ = signed_for_url(tmp_path, "1.0.0", f"http://127.0.0.1:{server.server_address[1]}/old.tar.gz")
        assert harness.send(manifest).reason == "downgrade"
    finally:
        server.shutdown()
    assert requests == [], "a refused version must not be fetched"


# ---- download -----------------------------------------------------------------------------------------------


def test_only_https_by_default(tmp_path):
    h = Harness(tmp_path, fetch=artifact.FetchPolicy())
    try:
        manifest, _ = make_update(tmp_path, "1.0.0")  # file://
        assert h.send(manifest).reason == "scheme_refused"
        server, requests = serve(body=b"x")
        try:
            manifest, _ = signed_for_url(tmp_path, "1.0.1", f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz")
            assert h.send(manifest).reason == "scheme_refused"
        finally:
            server.shutdown()
        assert requests == [] and h.loads == []
    finally:
        h.close()


def test_a_dripping_server_is_cut_off_by_the_overall_deadline(tmp_path):
    fetch = dataclasses.replace(TEST_FETCH, read_timeout_s=5.0, deadline_s=1.0)
    h = Harness(tmp_path, fetch=fetch)
    manifest, archive = make_update(tmp_path, "1.0.0")
    server, _ = serve(body=archive.read_bytes(), drip_s=0.1)  # one byte per 0.1 s: every read succeeds
    try:
        signed = resign_for_url(manifest, f"http://127.0.0.1:{server.server_address[1]}/slow.tar.gz")
        start = time.monotonic()
        outcome = h.send(signed, timeout=20)
        assert outcome.reason == "fetch_timeout", outcome.detail
        assert time.monotonic() - start < 4.0, "the deadline bounds the whole download"
        assert h.leftovers() == []
    finally:
        server.shutdown()
        h.close()


def test_redirects_to_another_scheme_are_refused(tmp_path):
    policy = artifact.FetchPolicy(schemes=frozenset({"http", "https"}), read_timeout_s=5.0, deadline_s=10.0)
    server, requests = serve(redirect_to="https://127.0.0.1:9/elsewhere.tar.gz")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz"
        with pytest.raises(artifact.InboundError, match="redirect from http to https refused"):
            artifact.fetch(url, tmp_path / "out", 100, policy)
    finally:
        server.shutdown()
    assert requests == ["/a.tar.gz"]


class _Proxy(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:  # a forward proxy gets the absolute URL on the request line
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"proxy")

    def log_message(self, *args) -> None:
        pass


def test_proxies_only_when_configured(tmp_path, monkeypatch):
    seen: list[str] = []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("P", (_Proxy,), {"seen": seen}))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    server, requests = serve(body=b"direct")
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", proxy_url)
        url = f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz"
        policy = artifact.FetchPolicy(schemes=frozenset({"http"}), read_timeout_s=5.0)
        assert artifact.fetch(url, tmp_path / "a", 100, policy)[0] == len(b"direct")
        assert seen == [] and requests == ["/a.tar.gz"], "the environment's proxy must be ignored"
        configured = dataclasses.replace(policy, proxy=proxy_url)
        assert artifact.fetch(url, tmp_path / "b", 100, configured)[0] == len(b"proxy")
        assert seen == [url]
    finally:
        server.shutdown()
        proxy.shutdown()


def test_a_fifo_as_file_url_does_not_block_the_worker(harness, tmp_path):
    fifo = tmp_path / "artifact.fifo"
    os.mkfifo(fifo)
    manifest, _ = make_update(tmp_path, "1.0.0", artifact={"url": fifo.as_uri()})
    outcome = harness.send(manifest, timeout=5)
    assert outcome.reason == "fetch_failed" and "not a regular file" in outcome.detail


def test_urls_and_query_strings_are_redacted_in_records_and_logs(tmp_path):
    logs: list[str] = []
    h = Harness(tmp_path)
    h.updater.log = lambda level, text: logs.append(text)
    try:
        url = "http://127.0.0.1:9/secret-dir/model.tar.gz?token=TOPSECRET"
        outcome = h.send(signed_for_url(tmp_path, "1.0.0", url)[0])
        assert outcome.reason == "fetch_failed"
        for text in [outcome.detail, *logs]:
            assert "TOPSECRET" not in text and "secret-dir" not in text, text
        assert "model.tar.gz" in outcome.detail
    finally:
        h.close()


# ---- package ------------------------------------------------------------------------------------------------


def test_member_count_is_checked_while_the_headers_are_read(tmp_path, monkeypatch):
    """Refused at the first member over the limit: the other headers are never read (before, all of a million
    tiny members' headers were read, and held in memory, before the count was checked)."""
    monkeypatch.setattr(artifact, "MAX_MEMBERS", 5)
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, mode="w:gz") as tar:
        for i in range(1000):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    headers_read = 0
    original_next = tarfile.TarFile.next

    def counting_next(self):
        nonlocal headers_read
        headers_read += 1
        return original_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", counting_next)
    with pytest.raises(artifact.InboundError, match="more than 5 members"):
        artifact.extract(archive, tmp_path / "out", 10**6)
    assert headers_read <= 6 + 1, f"{headers_read} headers read for a limit of 5"
    assert not (tmp_path / "out").exists()


def _repack(tmp: Path, package: Path, version: str) -> dict:
    archive = tmp / f"{package.name}.tar.gz"
    size, sha = artifact.pack(package, archive)
    now = time.time_ns()
    return update_manifest.sign(
        update_manifest.build(version=version, sha256=sha, size=size, artifact={"url": archive.as_uri()},
                              issued_ns=now, expires_ns=now + HOUR_NS),
        KEY,
    )  # fmt: skip


def _rewrite_manifest(package: Path, **changes) -> None:
    manifest = Manifest.load(package)
    dataclasses.replace(manifest, **changes).write(package)


def test_a_model_file_outside_the_package_is_refused(harness, tmp_path):
    outside = tmp_path / "broker-passwd"
    outside.write_bytes(b"cell1:$7$secret-hash\n")
    package = tmp_path / "pkg-escape"
    write_package(package, "1.0.0")
    _rewrite_manifest(package, model_file=str(outside), sha256=sha256_file(outside), size_bytes=outside.stat().st_size)
    outcome = harness.send(_repack(tmp_path, package, "1.0.0"))
    assert outcome.reason == "bad_package" and "model_file" in outcome.detail and harness.loads == []
    _rewrite_manifest(package, model_file="../broker-passwd")
    assert harness.send(_repack(tmp_path, package, "1.0.0")).reason == "bad_package"


def _external_data_package(tmp: Path, name: str, location: str) -> Path:
    """A package whose model keeps its weights in weights.bin, then points them at `location`."""
    package = tmp / name
    write_package(package, "1.0.0")
    model = onnx.load(str(package / "model.onnx"))
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save_model(model, str(package / "model.onnx"))
    model = onnx.load(str(package / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (package / "model.onnx").write_bytes(model.SerializeToString())
    model_path = package / "model.onnx"
    _rewrite_manifest(package, sha256=sha256_file(model_path), size_bytes=model_path.stat().st_size)
    return package


@pytest.mark.parametrize("location", ["../../outside.bin", "/etc/hostname"])
def test_onnx_external_data_outside_the_package_is_refused(harness, tmp_path, location):
    package = _external_data_package(tmp_path, "pkg-ext", location)
    assert package_paths.external_data_locations((package / "model.onnx").read_bytes()) != []
    outcome = harness.send(_repack(tmp_path, package, "1.0.0"))
    assert outcome.reason == "bad_package" and "external data" in outcome.detail, outcome.detail
    assert harness.loads == []


def test_onnx_external_data_inside_the_package_is_accepted(harness, tmp_path):
    package = _external_data_package(tmp_path, "pkg-ext-ok", "weights.bin")
    assert harness.send(_repack(tmp_path, package, "1.0.0")).accepted


def test_a_truncated_onnx_file_is_a_bad_package_not_a_crash():
    with pytest.raises(artifact.InboundError, match="cannot be parsed"):
        package_paths.external_data_locations(b"\x3a\xff\xff\xff\x0f")


# ---- keys ---------------------------------------------------------------------------------------------------


def _write_public(path: Path, key: Ed25519PrivateKey) -> None:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_trusted_keys_and_revocations_are_reloaded_at_run_time(tmp_path):
    new_key = Ed25519PrivateKey.generate()
    keyfile, revoked = tmp_path / "a.pub", tmp_path / "revoked"
    _write_public(keyfile, KEY)
    revoked.write_text("# revoked signing keys\n")
    trusted = update_manifest.TrustedKeys([str(keyfile)], str(revoked))
    h = Harness(tmp_path, keys=trusted)
    try:
        rotated, _ = make_update(tmp_path, "1.0.0", key=new_key)
        assert h.send(rotated).reason == "unknown_key"
        _write_public(keyfile, new_key)  # the new key is installed; no restart
        assert h.send(rotated).accepted
        revoked.write_text(update_manifest.key_id(new_key.public_key()) + "  # leaked\n")
        assert h.send(make_update(tmp_path, "1.1.0", key=new_key)[0]).reason == "revoked_key"
        revoked.write_text("not-a-key-id\n")  # a broken revocation list refuses everything
        assert h.send(make_update(tmp_path, "1.2.0", key=new_key)[0]).reason == "keys_unreadable"
    finally:
        h.close()
