"""Store-and-forward end to end: the cloud_bridge as a real process, a real mosquitto (with persistence,
like a production broker) and the cloud's `qc_cloud watch` store. The broker stops mid-stream, the bridge
is killed (SIGKILL) and restarted during the outage, the broker comes back: every part summary arrives,
in order, none lost, duplicates only as QoS 1 redeliveries with the same id."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray

from qc_cell.bringup.local_broker import Mosquitto
from qc_cell.ros import qos
from qc_cell.ros.time import from_ns
from qc_cell.testing.ros import ros_graph
from qc_cloud.commands.watch import Watcher
from qc_interfaces.msg import QualityDecision

pytestmark = pytest.mark.timeout(180)
CELL = "plant1/line2/cell3"


def _start_bridge(namespace: str, broker_url: str, outbox: str, log: Path) -> subprocess.Popen:
    params = {
        "broker_url": broker_url,
        "outbox_path": outbox,
        "site": "plant1",
        "line": "line2",
        "cell": "cell3",
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
        "diagnostics_period_s": 0.2,
    }
    args = [sys.executable, "-m", "qc_cell.nodes.cloud_bridge", "--ros-args", "-r", f"__ns:={namespace}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    with open(log, "ab") as out:  # a file, not a pipe nobody reads (a full pipe would block the node)
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def test_outage_and_bridge_crash_lose_no_summary_and_keep_order(tmp_path):
    namespace = f"/outage{os.getpid()}"
    outbox = str(tmp_path / "outbox.sqlite3")
    broker = Mosquitto(persistence=True).start()
    watch_args = argparse.Namespace(
        db=tmp_path / "cloud.sqlite3", site="plant1", line="line2", cell="cell3", session_expiry=3600,
        broker=broker.url, ca_file="", cert_file="", key_file="", username="", password_file="", password_env="",
        client_id="test-cloud", allow_plain_mqtt=False,
    )  # fmt: skip
    watcher = Watcher(watch_args)
    watcher.start()
    processes: list[subprocess.Popen] = []
    health: dict[str, str] = {}
    sent: list[str] = []
    try:
        with ros_graph() as graph:
            probe = graph.node("probe", namespace=namespace)
            decisions = probe.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)

            def on_diagnostics(msg: DiagnosticArray) -> None:
                for status in msg.status:
                    if status.name == "cloud_bridge: mqtt" and status.hardware_id == CELL:
                        health.clear()
                        health.update({kv.key: kv.value for kv in status.values})

            probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.DIAGNOSTICS)

            def readers() -> set[bytes]:
                return {
                    bytes(i.endpoint_gid)
                    for i in probe.get_subscriptions_info_by_topic(f"{namespace}/quality/decision")
                }

            def start_bridge() -> None:
                # A killed process's DDS reader lingers until its lease expires: wait for a new reader instead.
                before = readers()
                processes.append(_start_bridge(namespace, broker.url, outbox, tmp_path / "bridge.log"))
                assert graph.spin_until(lambda: readers() - before, 20.0), "the bridge did not subscribe"
                assert graph.spin_until(lambda: decisions.get_subscription_count() >= 1, 5.0)
                health.clear()
                assert graph.spin_until(lambda: bool(health), 10.0), "no diagnostics from the bridge"

            def send(count: int) -> None:
                for _ in range(count):
                    now = time.time_ns()
                    part_id = f"part-{len(sent):04d}"
                    msg = QualityDecision(part_id=part_id, verdict=len(sent) % 3, defect_probability=0.3)
                    msg.header.stamp, msg.decision_stamp, msg.reasons = from_ns(now - 10**7), from_ns(now), ["visual"]
                    decisions.publish(msg)
                    sent.append(part_id)
                    graph.spin_for(0.005)

            def stored_parts() -> int:
                return len(watcher.store.records("part"))

            # 1. Normal operation, then a crash with the broker up: the last will says the cell is gone.
            start_bridge()
            send(20)
            assert graph.spin_until(lambda: stored_parts() == 20, 15.0), f"{stored_parts()} of 20 arrived"
            _kill(processes[-1])
            assert graph.spin_until(lambda: _status(watcher) == ("offline", "connection_lost"), 10.0), _status(watcher)

            # 2. A new bridge; the broker stops mid-stream (records in flight), records pile up in the outbox.
            start_bridge()
            assert graph.spin_until(lambda: health.get("connected") == "True", 10.0), health
            send(10)
            broker.stop()
            send(10)
            assert graph.spin_until(lambda: health.get("connected") == "False", 10.0), health

            # 3. The bridge is killed during the outage and restarted: the outbox carries the records over.
            assert graph.spin_until(lambda: int(health.get("outbox_depth", 0)) >= 10, 10.0), health
            _kill(processes[-1])
            start_bridge()
            assert int(health["outbox_depth"]) >= 10, f"the restarted bridge lost its outbox: {health}"
            send(20)
            assert graph.spin_until(lambda: int(health.get("outbox_depth", 0)) >= 30, 10.0), health

            # 4. The broker comes back: everything is delivered.
            broker.start()
            assert graph.spin_until(lambda: stored_parts() == len(sent), 30.0), f"{stored_parts()}/{len(sent)}"
            assert graph.spin_until(lambda: health.get("outbox_depth") == "0", 10.0), health
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        watcher.stop()
        broker.stop()

    from qc_cloud.summary_store import SummaryStore

    store = SummaryStore(tmp_path / "cloud.sqlite3")
    parts = store.records("part")
    assert [p["part_id"] for p in parts] == sent, "every summary, exactly once per id, in sequence order"
    assert [p["seq"] for p in parts] == list(range(1, len(sent) + 1))
    assert len({p["epoch"] for p in parts}) == 1, "the outbox (and its numbering) survived the crashes"
    assert store.gaps() == [] and store.counts()["invalid"] == 0
    arrival = [row[0] for row in store._db.execute("SELECT seq FROM records WHERE type='part' ORDER BY received_ns")]
    assert arrival == sorted(arrival), "first arrivals are in order"
    duplicates = store._db.execute("SELECT id FROM duplicates").fetchall()
    assert all(i.startswith(parts[0]["epoch"] + "-") for (i,) in duplicates), "duplicates carry the original id"
    store.close()


def _status(watcher: Watcher) -> tuple[str, str] | None:
    row = watcher.store._db.execute("SELECT payload FROM status WHERE cell = ?", (CELL,)).fetchone()
    if row is None:
        return None
    import json

    status = json.loads(row[0])
    return status["state"], status.get("reason", "")
