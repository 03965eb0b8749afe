"""Cloud bridge benchmark: store-and-forward throughput and bytes sent to the cloud per inspected part.

    python bench/bench_bridge.py [--records 5000] [--parts 3000]

1. Sustained part summaries/s through the durable outbox (SQLite WAL, synchronous FULL and NORMAL) to a real
   mosquitto, from the first put to the last PUBACK-confirmed delete, against a baseline measured in the same
   run: plain paho QoS 1 publishing of the same payloads with the same in-flight window and no outbox.
2. Bytes sent to the cloud per inspected part, for a realistic record mix (part summaries, reject events,
   KPIs, process state, alerts, presence), counted on the wire by a TCP proxy between bridge and broker
   (MQTT framing, CONNECT, PUBLISH, PUBACK, pings; plain and TLS), against the raw image bytes of one part.
   Goal: < 0.1 % of a 1280x720x3 image, with every part's record delivered (checked by a subscriber).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src" / package) for package in ("qc_contract", "qc_cell", "qc_cloud")]

import paho.mqtt.client as mqtt  # noqa: E402

from qc_cell.bridge.bridge import Bridge, BridgeSettings  # noqa: E402
from qc_cell.bridge.outbox import OutboxLimits  # noqa: E402
from qc_cell.bringup.local_broker import Mosquitto, Subscriber, free_port  # noqa: E402
from qc_cell.testing.mosquitto import TcpProxy, make_test_pki, tls_listener  # noqa: E402
from qc_contract import records  # noqa: E402
from qc_contract.broker import broker_config  # noqa: E402
from qc_contract.topics import CellId  # noqa: E402

CELL = CellId("plant01", "line02", "cell03")
IMAGES = {"1280x720x3": 1280 * 720 * 3, "640x480x3": 640 * 480 * 3}
REASONS = {0: ["visual_normal"], 1: ["visual_reinspect"], 2: ["visual_defective"], 3: ["no_result"]}


def part_body(i: int, rng: random.Random) -> tuple[dict, int]:
    verdict = rng.choices([0, 1, 2, 3], weights=[90, 5, 4, 1])[0]
    now = time.time_ns()
    reasons = REASONS[verdict] + (["process_anomaly"] if rng.random() < 0.02 else [])
    body = records.part(
        part_id=f"cell03-{i:08d}",
        verdict=verdict,
        reasons=reasons,
        defect_probability=float("nan") if verdict == 3 else rng.random(),
        process_anomaly_score=rng.random() * 0.5,
        process_flags=0,
        model_version="efficientnet_b0-20250101T120000Z",
        encoder_count=1_000_000 + 250 * i,
        capture_ns=now - 45_000_000,
        decision_ns=now,
        capture_to_decision_ms=45.0 + rng.random() * 10,
    )
    return body, verdict


def settings(url: str, outbox: Path, synchronous: str = "FULL", **broker) -> BridgeSettings:
    return BridgeSettings(
        CELL,
        broker_config(url, "qc-bench-edge", **broker),
        str(outbox),
        OutboxLimits(max_records=10_000_000, max_bytes=4 << 30),
        synchronous=synchronous,
        inflight_window=20,
    )


def wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


# -- 1. throughput ---------------------------------------------------------------------------------------


def baseline_paho(broker: Mosquitto, payloads: list[bytes]) -> float:
    """Plain paho QoS 1, same window, no outbox: the ceiling the outbox is compared with."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="qc-bench-baseline", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(20)
    acked = threading.Semaphore(0)
    client.on_publish = lambda *args: acked.release()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    topic = CELL.stream_topic("part")
    started = time.perf_counter()
    for payload in payloads:
        client.publish(topic, payload, qos=1)
    for _ in payloads:
        acked.acquire()
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return len(payloads) / elapsed


def through_outbox(broker: Mosquitto, count: int, synchronous: str, workdir: Path) -> dict:
    rng = random.Random(1)
    bodies = [part_body(i, rng)[0] for i in range(count)]
    cloud = Subscriber("127.0.0.1", broker.port, CELL.stream_topic("part"))
    bridge = Bridge(settings(broker.url, workdir / f"outbox-{synchronous}.sqlite3", synchronous))
    bridge.start()
    bridge.session.wait_connected(10)
    started = time.perf_counter()
    for body in bodies:
        bridge.send("part", body)
    stored = time.perf_counter() - started
    drained = wait(lambda: bridge.outbox.depth == 0, 300)
    elapsed = time.perf_counter() - started
    delivered = cloud.wait_for(lambda: len(cloud.snapshot()) >= count, 30)
    seqs = [m.json()["seq"] for m in cloud.snapshot()]
    bridge.stop()
    cloud.close()
    return {
        "stored_per_s": count / stored,
        "delivered_per_s": count / elapsed,
        "all_delivered_in_order": drained and delivered and seqs[:count] == list(range(1, count + 1)),
    }


# -- 2. bytes per part -------------------------------------------------------------------------------------


def cell_traffic(bridge: Bridge, parts: int, rate_pps: float = 10.0) -> None:
    """The records a cell sends for `parts` parts at rate_pps: one summary per part, a reject event per
    ejected part, a KPI snapshot every 10 s, process state every 10 s, an alert per ~500 parts."""
    rng = random.Random(7)
    every_10s = int(10 * rate_pps)
    for i in range(parts):
        body, verdict = part_body(i, rng)
        bridge.send("part", body)
        now = time.time_ns()
        if verdict in (2, 3):
            bridge.send(
                "reject",
                records.reject(
                    part_id=body["part_id"], verdict=verdict, outcome=0, method="modbus", lane="reject",
                    capture_ns=now - 45_000_000, planned_ns=now + 600_000_000, actual_ns=now + 600_300_000,
                    lateness_ms=0.3, message="",
                ),
            )  # fmt: skip
        if i % every_10s == every_10s - 1:
            bridge.send(
                "kpi",
                records.kpi(
                    stamp_ns=now, window_s=60.0, parts=600, counts={"NORMAL": 540, "REINSPECT": 30, "DEFECTIVE": 24,
                    "NOT_INSPECTED": 6}, yield_ratio=0.9, throughput_pps=rate_pps,
                    latency_ms={"p50": 45.2, "p95": 61.0, "p99": 80.3},
                    reasons={"visual_normal": 540, "visual_reinspect": 30, "visual_defective": 24, "no_result": 6},
                    total_parts=i + 1,
                ),
            )  # fmt: skip
            bridge.send(
                "process",
                records.process(
                    stamp_ns=now, temperature_c=41.25, pressure_pa=101_325.0, vibration_rms=0.0421,
                    anomaly_score=0.12, flags=0, out_of_spec=False, stale=False,
                ),
            )  # fmt: skip
        if i % 500 == 499:
            bridge.send(
                "alert",
                records.alert(
                    stamp_ns=now, severity=1, source="sensor_fusion", code="VIBRATION_TREND",
                    message="vibration RMS trending up: 0.042 m/s^2 (+18% over 1 h)", part_id="",
                ),
            )  # fmt: skip


def bytes_per_part(parts: int, workdir: Path, tls: bool) -> dict:
    extra, tls_port, broker_kwargs = "", 0, {}
    if tls:
        pki = make_test_pki(workdir / "pki")
        tls_port = free_port()
        extra = tls_listener(tls_port, pki)
        broker_kwargs = {"ca_file": str(pki.ca_cert)}
    with Mosquitto(extra_config=extra) as broker:
        proxy = TcpProxy(tls_port or broker.port)
        cloud = Subscriber("127.0.0.1", broker.port)
        url = f"{'mqtts' if tls else 'mqtt'}://{'localhost' if tls else '127.0.0.1'}:{proxy.port}"
        bridge = Bridge(settings(url, workdir / f"outbox-bytes-{tls}.sqlite3", **broker_kwargs))
        bridge.start()
        bridge.session.wait_connected(10)
        cell_traffic(bridge, parts)
        drained = wait(lambda: bridge.outbox.depth == 0, 120)
        delivered = cloud.wait_for(lambda: len(cloud.snapshot("/part")) >= parts, 30)
        part_ids = {json.loads(m.payload)["part_id"] for m in cloud.snapshot("/part")}
        received = cloud.snapshot()
        bridge.stop()
        time.sleep(0.3)
        cloud.close()
        proxy.close()
    payload = sum(len(m.payload) + len(m.topic) for m in received if not m.topic.endswith("/status"))
    return {
        "wire_up_per_part": proxy.up / parts,
        "wire_down_per_part": proxy.down / parts,
        "payload_topic_per_part": payload / parts,
        "part_record_bytes": sum(len(m.payload) for m in received if m.topic.endswith("/part")) / parts,
        "every_part_delivered": drained and delivered and len(part_ids) == parts,
        "messages": len(received),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000, help="summaries for the throughput runs")
    parser.add_argument("--parts", type=int, default=3000, help="parts for the bytes-per-part runs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="qc-bench-bridge-"))
    rng = random.Random(1)
    payloads = [
        records.encode(records.envelope(CELL.path, "0a1b2c3d", "part", i + 1, part_body(i, rng)[0]))
        for i in range(args.records)
    ]

    print(f"== 1. sustained part summaries through the outbox to mosquitto ({args.records} records, window 20)")
    with Mosquitto() as broker:
        baseline = baseline_paho(broker, payloads)
        full = through_outbox(broker, args.records, "FULL", workdir)
        normal = through_outbox(broker, args.records, "NORMAL", workdir)
    print(f"{'path':44s} {'stored/s':>10s} {'delivered/s':>12s} {'vs baseline':>12s}  all delivered, in order")
    print(f"{'baseline: paho QoS 1, no outbox':44s} {'-':>10s} {baseline:12.0f} {1.0:12.2f}")
    for name, result in (("outbox, synchronous=FULL (default)", full), ("outbox, synchronous=NORMAL", normal)):
        print(
            f"{name:44s} {result['stored_per_s']:10.0f} {result['delivered_per_s']:12.0f} "
            f"{result['delivered_per_s'] / baseline:12.2f}  {result['all_delivered_in_order']}"
        )

    print(f"\n== 2. bytes sent to the cloud per inspected part ({args.parts} parts, realistic record mix)")
    header = f"{'link':6s} {'wire up/part':>13s} {'payload+topic':>14s} {'part record':>12s}"
    print(header + "".join(f" {'% of ' + k:>17s}" for k in IMAGES) + "  every part delivered")
    ok = full["all_delivered_in_order"] and normal["all_delivered_in_order"]
    for tls in (False, True):
        r = bytes_per_part(args.parts, workdir, tls)
        ratios = {k: 100 * r["wire_up_per_part"] / v for k, v in IMAGES.items()}
        print(
            f"{'TLS' if tls else 'plain':6s} {r['wire_up_per_part']:11.1f} B {r['payload_topic_per_part']:12.1f} B "
            f"{r['part_record_bytes']:10.1f} B"
            + "".join(f" {ratios[k]:16.4f}%" for k in IMAGES)
            + f"  {r['every_part_delivered']} ({r['messages']} messages; {r['wire_down_per_part']:.1f} B/part down)"
        )
        ok = ok and r["every_part_delivered"] and ratios["1280x720x3"] < 0.1
    print(f"\ngoal (< 0.1 % of a 1280x720x3 image per part, every record delivered): {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
