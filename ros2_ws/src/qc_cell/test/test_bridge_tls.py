"""The bridge core against brokers configured like production: TLS with a CA generated here (server and
client certificates), password authentication, and an ACL that refuses a topic (MQTT 5 PUBACK 0x87):
a refused record is kept and retried, never deleted as if it had been delivered."""

from __future__ import annotations

import time
from pathlib import Path

from qc_cell.bridge.bridge import Bridge, BridgeSettings
from qc_cell.bringup.local_broker import Mosquitto, Subscriber, free_port
from qc_cell.testing.mosquitto import acl_file, make_test_pki, password_file, tls_listener
from qc_contract import records
from qc_contract.broker import broker_config
from qc_contract.topics import CellId

CELL = CellId("plant1", "line2", "cell3")
PASSWORD = "edge-secret-4711"


def _until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _bridge(tmp_path: Path, url: str, log: list[str], **broker) -> Bridge:
    config = broker_config(url, "qc-plant1-line2-cell3", reconnect_min_s=1, reconnect_max_s=1, **broker)
    bridge = Bridge(
        BridgeSettings(CELL, config, str(tmp_path / "outbox.sqlite3")), log=lambda lvl, msg: log.append(msg)
    )
    bridge.start()
    return bridge


def _part(i: int) -> dict:
    return {"part_id": f"p{i}", "verdict": "NORMAL"}


def test_tls_with_client_certificate_and_password(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    port = free_port()
    config = "\n".join(
        [
            password_file(tmp_path / "passwd", {"edge": PASSWORD, "cloud": "cloud-pw"}),
            acl_file(
                tmp_path / "acl", "user edge\ntopic readwrite qc/plant1/line2/cell3/#\nuser cloud\ntopic read qc/#"
            ),
            tls_listener(port, pki, require_certificate=True),
        ]
    )
    log: list[str] = []
    with Mosquitto(extra_config=config) as broker:
        cloud = Subscriber(
            "127.0.0.1", port, ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert),
            key_file=str(pki.client_key), username="cloud", password="cloud-pw",
        )  # fmt: skip
        bridge = _bridge(
            tmp_path, f"mqtts://127.0.0.1:{port}", log, ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert),
            key_file=str(pki.client_key), username="edge", password_file=str(tmp_path / "password"),
        )  # fmt: skip
        try:
            assert bridge.session.wait_connected(10), bridge.session.last_error
            for i in range(5):
                bridge.send("part", _part(i))
            assert cloud.wait_for(lambda: len(cloud.snapshot("/part")) == 5), broker.log.read_text()
            assert [r["seq"] for r in cloud.records("/part")] == [1, 2, 3, 4, 5]
            assert _until(lambda: bridge.outbox.depth == 0)
            shown = repr(bridge.settings) + str(bridge.health()) + str(bridge.status_details())
        finally:
            bridge.stop()
            cloud.close()
    assert PASSWORD not in "\n".join(log) + shown, "the password leaked into logs, settings or health"


def test_untrusted_server_certificate_is_refused_and_records_wait(tmp_path):
    pki, other = make_test_pki(tmp_path / "pki"), make_test_pki(tmp_path / "other")
    port = free_port()
    log: list[str] = []
    with Mosquitto(extra_config=tls_listener(port, pki)):
        bridge = _bridge(tmp_path, f"mqtts://127.0.0.1:{port}", log, ca_file=str(other.ca_cert))
        try:
            for i in range(3):
                bridge.send("part", _part(i))
            assert _until(lambda: "CERTIFICATE_VERIFY_FAILED" in bridge.session.last_error.upper().replace(" ", "_"))
            assert not bridge.connected and bridge.outbox.depth == 3
            assert bridge.health()["connect_failures"] >= 1
        finally:
            bridge.stop()


def test_wrong_password_is_reported_not_logged(tmp_path):
    (tmp_path / "password").write_text("not-the-password\n")
    log: list[str] = []
    with Mosquitto(extra_config=password_file(tmp_path / "passwd", {"edge": PASSWORD})) as broker:
        bridge = _bridge(tmp_path, broker.url, log, username="edge", password_file=str(tmp_path / "password"))
        try:
            assert _until(lambda: "refused" in bridge.session.last_error), bridge.session.last_error
            assert not bridge.connected
        finally:
            bridge.stop()
    assert not any("not-the-password" in line for line in log)


def test_acl_refusal_keeps_the_record_until_the_broker_accepts_it(tmp_path):
    prefix = CELL.prefix
    strict = f"topic write {prefix}part\ntopic write {prefix}status\ntopic read qc/#"
    workdir = tmp_path / "broker"
    workdir.mkdir()
    log: list[str] = []
    # persistence and a persistent cloud session: what the bridge sends right after the broker's restart is kept
    # for the subscriber even if it reconnects after that.
    broker = Mosquitto(extra_config=acl_file(workdir / "acl", strict), workdir=workdir, persistence=True).start()
    cloud = Subscriber("127.0.0.1", broker.port, session_id="cloud")
    bridge = _bridge(tmp_path, broker.url, log)
    try:
        assert bridge.session.wait_connected(10)
        bridge.send("part", _part(1))
        bridge.send(
            "alert", records.alert(stamp_ns=time.time_ns(), severity=2, source="t", code="X", message="m", part_id="")
        )
        bridge.send("part", _part(2))
        assert cloud.wait_for(lambda: len(cloud.snapshot("/part")) == 2)
        assert _until(lambda: bridge.forwarder.counts["refused"] >= 1)
        assert "Not authorized" in bridge.forwarder.last_refusal
        assert _until(lambda: bridge.outbox.depth == 1), "the refused alert must stay in the outbox"
        assert bridge.outbox.pending()[0].stream == "alert" and not cloud.snapshot("/alert")
        # The operator fixes the ACL and restarts the broker: the kept record goes out.
        cloud.close()
        broker.stop()
        acl_file(workdir / "acl", strict + f"\ntopic write {prefix}alert")
        broker.start()
        cloud = Subscriber("127.0.0.1", broker.port, session_id="cloud")
        assert _until(lambda: bridge.outbox.depth == 0, 20.0), bridge.health()
        assert cloud.wait_for(lambda: len(cloud.snapshot("/alert")) == 1)
        assert cloud.records("/alert")[0]["seq"] == 1
    finally:
        bridge.stop()
        cloud.close()
        broker.stop()
