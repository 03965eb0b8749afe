"""The MQTT session and forwarder on a network that fails: acknowledgements lost and the connection cut
(no DISCONNECT). paho resends the unacknowledged records on reconnect; the duplicates carry the original ids;
the broker publishes the cell's last will; the outbox deletes a record only after its PUBACK."""

from __future__ import annotations

import time

from qc_cell.bridge.bridge import Bridge, BridgeSettings
from qc_cell.bringup.local_broker import Mosquitto, Subscriber
from qc_cell.testing.mosquitto import TcpProxy
from qc_contract.broker import broker_config
from qc_contract.topics import CellId

CELL = CellId("plant1", "line2", "cell3")


def _until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_lost_pubacks_and_a_cut_connection_lose_nothing_and_duplicates_keep_their_ids(tmp_path):
    with Mosquitto() as broker:
        proxy = TcpProxy(broker.port)
        cloud = Subscriber("127.0.0.1", broker.port)
        config = broker_config(f"mqtt://127.0.0.1:{proxy.port}", "edge", keepalive_s=5, reconnect_max_s=1)
        bridge = Bridge(BridgeSettings(CELL, config, str(tmp_path / "outbox.sqlite3")))
        bridge.start()
        try:
            assert bridge.session.wait_connected(10)
            bridge.send("part", {"part_id": "p0"})
            assert _until(lambda: bridge.outbox.depth == 0)
            proxy.hold_down = True  # the broker's PUBACKs never arrive
            for i in range(1, 6):
                bridge.send("part", {"part_id": f"p{i}"})
            assert _until(lambda: len(cloud.snapshot("/part")) == 6), "the records reached the broker"
            time.sleep(0.3)
            assert bridge.outbox.depth == 5 and bridge.forwarder.inflight == 5, "no PUBACK, no delete"
            proxy.cut()  # the network fails; no DISCONNECT reaches the broker
            proxy.hold_down = False
            assert _until(lambda: any(m.json()["state"] == "offline" for m in cloud.snapshot("/status")))
            assert _until(lambda: bridge.outbox.depth == 0, 15.0), bridge.health()
            assert _until(lambda: len(cloud.snapshot("/part")) == 11)
        finally:
            bridge.stop()
            cloud.close()
            proxy.close()
    parts = cloud.records("/part")
    assert [p["seq"] for p in parts] == [1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6], "resent in order after the reconnect"
    assert {p["id"] for p in parts[6:]} == {p["id"] for p in parts[1:6]}, "duplicates carry the original ids"
    states = [(m.json()["state"], m.json().get("reason", "")) for m in cloud.snapshot("/status")]
    assert ("offline", "connection_lost") in states and states[-1] == ("offline", "shutdown")
    assert bridge.health()["connects"] == 2 and bridge.health()["acked"] == 6
