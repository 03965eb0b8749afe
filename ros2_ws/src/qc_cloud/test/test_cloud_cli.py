"""Cloud-side CLI (`qc_cloud keys | publish-model | watch | gaps`) with real files, keys and a real broker."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import threading
import time
from datetime import datetime

import paho.mqtt.publish as publish
import pytest
from jsonschema import Draft202012Validator

from qc_cell.bridge.bridge import Bridge, BridgeSettings
from qc_cell.bridge.outbox import OutboxLimits
from qc_cell.bringup.local_broker import Mosquitto
from qc_cell.inference.synthetic_models import write_package
from qc_cloud import cli
from qc_contract import artifact, records, schemas, update_manifest
from qc_contract.broker import broker_config
from qc_contract.topics import CellId

CELL = ["--site", "plant1", "--line", "line2", "--cell", "cell3"]
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(autouse=True)
def signing_passphrase(monkeypatch):
    """The signing key's passphrase, from the environment as in production (never on the command line)."""
    monkeypatch.setenv(update_manifest.PASSPHRASE_ENV, PASSPHRASE.decode())


def _stored_statuses(db) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as connection:
        try:
            return connection.execute("SELECT COUNT(*) FROM status").fetchone()[0]
        except sqlite3.OperationalError:  # the watcher has not created its tables yet
            return 0


def _part(part_id: str) -> dict:
    now = time.time_ns()
    return records.part(
        part_id=part_id, verdict=0, reasons=["visual_normal"], defect_probability=0.1, process_anomaly_score=0.0,
        process_flags=0, model_version="1.0.0", encoder_count=-1, capture_ns=now - 10**7, decision_ns=now,
        capture_to_decision_ms=10.0,
    )  # fmt: skip


def test_keys_generate_writes_a_private_key_only_the_owner_can_read(tmp_path, capsys):
    assert cli.main(["keys", "generate", "--out", str(tmp_path)]) == 0
    private, public = tmp_path / "model-signing.key", tmp_path / "model-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = update_manifest.load_private_key(private, PASSPHRASE)
    assert update_manifest.key_id(update_manifest.load_public_key(public)) == update_manifest.key_id(key.public_key())
    assert update_manifest.key_id(key.public_key()) in capsys.readouterr().out
    assert cli.main(["keys", "generate", "--out", str(tmp_path)]) == 2, "never overwrite a key silently"
    assert update_manifest.load_private_key(private, PASSPHRASE).private_bytes_raw() == key.private_bytes_raw()


def test_publish_model_dry_run_signs_a_verifiable_manifest(tmp_path):
    cli.main(["keys", "generate", "--out", str(tmp_path / "keys")])
    write_package(tmp_path / "pkg", "4.2.0")
    argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(tmp_path / "keys" / "model-signing.key"), *CELL,
            "--artifact-dir", str(tmp_path / "artifacts"), "--targets", "plant1/*/*", "--expires-in-h", "24",
            "--dry-run", "--manifest-out", str(tmp_path / "manifest.json")]  # fmt: skip
    assert cli.main(argv) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    Draft202012Validator(schemas.schema("model_update")).validate(manifest)
    public = update_manifest.load_public_key(tmp_path / "keys" / "model-signing.pub")
    update_manifest.verify_signature(manifest, {manifest["key_id"]: public})
    archive = tmp_path / "artifacts" / "4.2.0.tar.gz"
    assert manifest["artifact"]["url"] == archive.resolve().as_uri()
    assert (manifest["size"], manifest["sha256"]) == (archive.stat().st_size, artifact.sha256_of(archive))
    assert manifest["targets"] == ["plant1/*/*"] and "expires_at" in manifest
    # Deterministic packing: the same package gives the same artifact (same hash), whenever it is packed.
    assert artifact.pack(tmp_path / "pkg", tmp_path / "again.tar.gz")[1] == manifest["sha256"]


def test_the_private_key_is_encrypted_with_a_passphrase_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "env")]) == 0
    private = tmp_path / "env" / "model-signing.key"
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    with pytest.raises(update_manifest.KeyFileError, match="encrypted"):
        update_manifest.load_private_key(private)
    with pytest.raises(update_manifest.KeyFileError, match="wrong passphrase"):
        update_manifest.load_private_key(private, b"guess")
    (tmp_path / "passphrase").write_text("from a file\n")
    argv = ["keys", "generate", "--out", str(tmp_path / "file"), "--passphrase-file", str(tmp_path / "passphrase")]
    assert cli.main(argv) == 0
    update_manifest.load_private_key(tmp_path / "file" / "model-signing.key", b"from a file")
    monkeypatch.delenv(update_manifest.PASSPHRASE_ENV)
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "none")]) == 2, "no passphrase: refused"
    assert not (tmp_path / "none" / "model-signing.key").exists()
    # publish-model reads it the same way.
    write_package(tmp_path / "pkg", "4.2.0")
    argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(private), *CELL, "--artifact-dir",
            str(tmp_path / "a"), "--dry-run"]  # fmt: skip
    assert cli.main(argv) == 2 and "passphrase" in capsys.readouterr().out
    monkeypatch.setenv(update_manifest.PASSPHRASE_ENV, PASSPHRASE.decode())
    assert cli.main(argv) == 0


def _dry_run_manifest(tmp_path, *extra: str) -> tuple[int, dict]:
    cli.main(["keys", "generate", "--out", str(tmp_path / "keys")])
    write_package(tmp_path / "pkg", "4.2.0")
    out = tmp_path / "manifest.json"
    out.unlink(missing_ok=True)
    argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(tmp_path / "keys" / "model-signing.key"), *CELL,
            "--artifact-dir", str(tmp_path / "artifacts"), "--dry-run", "--manifest-out", str(out), *extra]  # fmt: skip
    code = cli.main(argv)
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_publish_model_always_signs_an_expiry_and_targets(tmp_path):
    code, manifest = _dry_run_manifest(tmp_path)
    assert code == 0 and manifest["targets"] == ["plant1/line2/cell3"], "default: the cell it is published to"
    lifetime = update_manifest_lifetime_h(manifest)
    assert 20 * 24 < lifetime <= 21 * 24, lifetime
    code, manifest = _dry_run_manifest(tmp_path, "--all-cells")
    assert code == 0 and "targets" not in manifest
    assert _dry_run_manifest(tmp_path, "--expires-in-h", "0")[0] == 2, "a manifest that never expires is refused"
    assert _dry_run_manifest(tmp_path, "--targets", "plant1*")[0] == 2, "a target is site/line/cell"
    code, manifest = _dry_run_manifest(tmp_path, "--rollback-from", "5.0.0")
    assert code == 0 and manifest["rollback_from"] == "5.0.0"
    assert _dry_run_manifest(tmp_path, "--rollback-from", "4.0.0")[0] == 2, "a rollback goes to an older version"


def update_manifest_lifetime_h(manifest: dict) -> float:
    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return (parse(manifest["expires_at"]) - parse(manifest["issued_at"])) / 3600


def test_keys_id_prints_the_key_id_for_the_revocation_list(tmp_path, capsys):
    cli.main(["keys", "generate", "--out", str(tmp_path)])
    capsys.readouterr()
    assert cli.main(["keys", "id", str(tmp_path / "model-signing.pub")]) == 0
    key_id = update_manifest.key_id(update_manifest.load_public_key(tmp_path / "model-signing.pub"))
    assert capsys.readouterr().out.split()[0] == key_id


def test_publish_model_refuses_a_broken_package(tmp_path, capsys):
    cli.main(["keys", "generate", "--out", str(tmp_path / "keys")])
    write_package(tmp_path / "pkg", "4.2.0")
    (tmp_path / "pkg" / "model.onnx").write_bytes(b"not the model the manifest describes")
    argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(tmp_path / "keys" / "model-signing.key"), *CELL,
            "--artifact-dir", str(tmp_path / "a"), "--dry-run"]  # fmt: skip
    assert cli.main(argv) == 2 and "model.onnx" in capsys.readouterr().out


def test_publish_model_without_a_cell_answering_times_out(tmp_path, capsys):
    cli.main(["keys", "generate", "--out", str(tmp_path / "keys")])
    write_package(tmp_path / "pkg", "4.2.0")
    with Mosquitto() as broker:
        argv = ["publish-model", str(tmp_path / "pkg"), "--key", str(tmp_path / "keys" / "model-signing.key"), *CELL,
                "--artifact-dir", str(tmp_path / "a"), "--broker", broker.url, "--wait", "1"]  # fmt: skip
        assert cli.main(argv) == 3
    assert "no answer" in capsys.readouterr().out


def test_watch_stores_a_cells_records_and_gaps_finds_what_is_missing(tmp_path, capsys):
    db = tmp_path / "cloud.sqlite3"
    cell = CellId("plant1", "line2", "cell3")
    with Mosquitto() as broker:
        # A retained status: when the watcher has stored it, its subscription is in place.
        status = records.encode(records.status(cell=cell.path, state="offline", stamp_ns=time.time_ns()))
        publish.single(cell.status, status, qos=1, retain=True, hostname="127.0.0.1", port=broker.port)
        watch = threading.Thread(
            target=cli.main,
            args=(["watch", "--db", str(db), "--broker", broker.url, "--duration", "4", "--quiet", *CELL],),
        )
        watch.start()
        deadline = time.monotonic() + 10
        while not _stored_statuses(db):
            assert time.monotonic() < deadline, "the watcher did not subscribe"
            time.sleep(0.05)
        # The real edge code, with an outbox that can hold only 5 records while offline -> a visible gap.
        settings = BridgeSettings(
            cell,
            broker_config("mqtt://127.0.0.1:1", "edge"),  # nowhere: records stay in the outbox
            str(tmp_path / "outbox.sqlite3"),
            OutboxLimits(max_records=5, policy="reject_new"),
        )
        offline = Bridge(settings)
        for i in range(7):
            offline.send("part", _part(f"p{i}"))
        offline.outbox.close()
        online = Bridge(
            BridgeSettings(cell, broker_config(broker.url, "edge"), str(tmp_path / "outbox.sqlite3"), settings.limits)
        )
        online.start()
        for i in range(7, 9):
            deadline = time.monotonic() + 5
            while online.outbox.depth and time.monotonic() < deadline:
                time.sleep(0.05)
            online.send("part", _part(f"p{i}"))
        time.sleep(1.0)
        online.stop()
        # A payload that is not a record: kept apart, with its reason, never silently dropped.
        publish.single(cell.stream_topic("part"), b"{broken", qos=1, hostname="127.0.0.1", port=broker.port)
        watch.join(timeout=20)
    out = capsys.readouterr().out
    assert "done:" in out
    assert cli.main(["gaps", "--db", str(db), "--type", "part"]) == 1
    report = capsys.readouterr().out
    assert "missing #6-7 (2)" in report, report
    assert cli.main(["gaps", "--db", str(db), "--type", "part", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["missing"] == 2 and result["invalid"] == 1
    assert result["streams"][0]["records"] == 7 and result["streams"][0]["last"] == 9
    assert cli.main(["gaps", "--db", str(tmp_path / "none.sqlite3")]) == 2
