"""`qc_cloud broker-config` with a real mosquitto: each cell publishes only as itself, reads only its own inbound
topics; the service's account reads every cell and ingests through the generated ACL."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from sqlalchemy import func, select

from qc_cell.bringup.local_broker import Mosquitto, mosquitto_binary
from qc_cloud import cli
from qc_cloud.fleet import broker_acl, models, settings, simulate
from qc_cloud.fleet.service import FleetService
from qc_contract import records

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
A, B = "plant1/line1/cell001", "plant1/line1/cell002"


class Client:
    """An MQTT 5 client that reports PUBACK / SUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.connack: list = []
        self.pubacks: dict[int, object] = {}
        self.subacks: list = []
        self._event = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (self.connack.append(rc), self._event.set())
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.extend(rcs)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._event.wait(10), "no CONNACK"

    def publish(self, topic: str, payload: bytes):
        info = self.client.publish(topic, payload, qos=1)
        end = time.monotonic() + 10
        while info.mid not in self.pubacks and time.monotonic() < end:
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str):
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        end = time.monotonic() + 10
        while len(self.subacks) == before and time.monotonic() < end:
            time.sleep(0.01)
        return self.subacks[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet_broker(tmp_path):
    out = tmp_path / "broker-config"
    assert cli.main(["broker-config", "--cells", A, B, "--out", str(out)]) == 0
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    conf = f"allow_anonymous false\npassword_file {out / 'passwd'}\nacl_file {out / 'acl'}\n"
    (tmp_path / "mq").mkdir()
    with Mosquitto(extra_config=conf, workdir=tmp_path / "mq") as broker:
        yield broker, out


def _password(out, user: str) -> str:
    return broker_acl.password_path(out, user).read_text().strip()


def _part(cell: str, seq: int = 1) -> bytes:
    return records.encode(simulate.part_record(cell, "0badcafe", seq))


def test_a_cell_cannot_publish_or_listen_as_another(fleet_broker):
    broker, out = fleet_broker
    service = Client(broker.port, "qc-fleet", _password(out, "qc-fleet"))
    seen: list[str] = []
    service.client.on_message = lambda c, u, m: seen.append(m.topic)
    assert not service.subscribe("qc/#").is_failure
    cell_a = Client(broker.port, A, _password(out, A))
    assert not cell_a.publish(f"qc/{A}/part", _part(A)).is_failure
    refused = cell_a.publish(f"qc/{B}/part", _part(B))
    assert refused.is_failure and refused.value == 0x87, f"publishing as another cell: {refused}"
    assert cell_a.publish(f"qc/{A}/model/update", b"{}").is_failure, "a cell cannot send itself an update"
    # mosquitto 2.0 grants any subscription and applies `topic read` on delivery: A never gets B's update.
    got_a: list[str] = []
    cell_a.client.on_message = lambda c, u, m: got_a.append(m.topic)
    cell_a.subscribe(f"qc/{B}/model/update")
    cell_a.subscribe(f"qc/{A}/verify/response")
    assert not service.publish(f"qc/{B}/model/update", b"{}").is_failure
    assert not service.publish(f"qc/{A}/verify/response", b"{}").is_failure
    end = time.monotonic() + 5
    while not seen and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)
    assert [t for t in seen if t.endswith("/part")] == [f"qc/{A}/part"], "B's topic got nothing from A"
    assert got_a == [f"qc/{A}/verify/response"], "a cell reads only its own inbound topics"
    wrong = Client(broker.port, A, "not-the-password")
    assert wrong.connack[0].is_failure
    for c in (service, cell_a, wrong):
        c.close()


def test_the_service_ingests_with_its_own_account(fleet_broker, tmp_path):
    broker, out = fleet_broker
    s = settings.load(
        None,
        env={},
        data_dir=str(tmp_path / "fleet"),
        broker_url=broker.url,
        api=False,
        broker_username="qc-fleet",
        broker_password_file=str(broker_acl.password_path(out, "qc-fleet")),
    )
    service = FleetService(s).start()
    try:
        assert service.workers[0].ready, service.workers[0].stats.last_error
        cell_b = Client(broker.port, B, _password(out, B))
        for seq in range(1, 4):
            assert not cell_b.publish(f"qc/{B}/part", _part(B, seq)).is_failure
        assert cell_b.publish(f"qc/{A}/part", _part(A, 1)).is_failure
        end = time.monotonic() + 20
        with service.engine.connect() as conn:
            count = 0
            while count < 3 and time.monotonic() < end:
                count = conn.execute(select(func.count()).select_from(models.Part.__table__)).scalar_one()
                time.sleep(0.1)
            cells = {c for (c,) in conn.execute(select(models.Part.cell))}
        assert count == 3 and cells == {B}
        cell_b.close()
    finally:
        service.stop()


def test_the_verifier_reads_requests_and_writes_only_answers_and_its_records(fleet_broker):
    broker, out = fleet_broker
    verifier = Client(broker.port, "qc-verifier", _password(out, "qc-verifier"))
    got: list[str] = []
    verifier.client.on_message = lambda c, u, m: got.append(m.topic)
    verifier.subscribe("$share/qc-verifier/qc/+/+/+/verify/request")
    cell_a = Client(broker.port, A, _password(out, A))
    assert not cell_a.publish(f"qc/{A}/verify/request", b"{}").is_failure
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        time.sleep(0.05)
    assert got == [f"qc/{A}/verify/request"], "the verifier's workers get the cells' requests"
    assert not verifier.publish(f"qc/{A}/verify/response", b"{}").is_failure
    assert not verifier.publish(f"qc/{A}/verify/verification", b"{}").is_failure
    assert not verifier.publish("qc-verifier/w1/status", b"{}").is_failure
    for topic in (f"qc/{A}/part", f"qc/{A}/model/update"):
        refused = verifier.publish(topic, b"{}")
        assert refused.is_failure and refused.value == 0x87, f"the verifier may not publish {topic}: {refused}"
    assert cell_a.publish(f"qc/{A}/verify/verification", b"{}").is_failure, "a cell cannot forge a verification"
    for c in (verifier, cell_a):
        c.close()
