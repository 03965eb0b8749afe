"""Simulated cells for the tests and the benchmark: valid records of every stream, as the cell's bridge builds
them (qc_contract.records), and a QoS 1 publisher that waits for every PUBACK."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from qc_contract import records

VERDICTS = (0, 0, 0, 0, 0, 0, 1, 2)  # mostly NORMAL


def part_record(cell: str, epoch: str, seq: int, decision_ns: int | None = None, model: str = "m-1") -> dict:
    decision_ns = decision_ns or time.time_ns()
    body = records.part(
        part_id=f"{cell.rsplit('/', 1)[-1]}-{epoch}-{seq:08d}",
        verdict=VERDICTS[seq % len(VERDICTS)],
        reasons=["visual_normal"],
        defect_probability=(seq % 100) / 100,
        process_anomaly_score=0.1,
        process_flags=0,
        model_version=model,
        encoder_count=seq * 100,
        capture_ns=decision_ns - 40_000_000,
        decision_ns=decision_ns,
        capture_to_decision_ms=40.0,
    )
    return records.envelope(cell, epoch, "part", seq, body)


def kpi_record(cell: str, epoch: str, seq: int) -> dict:
    body = records.kpi(
        stamp_ns=time.time_ns(),
        window_s=60.0,
        parts=100,
        counts={"NORMAL": 90, "DEFECTIVE": 10},
        yield_ratio=0.9,
        throughput_pps=30.0,
        latency_ms={"p50": 40.0, "p95": 50.0, "p99": 60.0},
        reasons={"visual_normal": 90},
        total_parts=seq * 100,
    )
    return records.envelope(cell, epoch, "kpi", seq, body)


def drift_kpi_stream(
    cell: str,
    parts: int,
    per_record: int = 20,
    lighting=lambda index: 1.0,
    seed: int = 0,
    model: str = "m-1",
    epoch: str = "0d21f700",
    start_ns: int = 1_800_000_000 * 10**9,
    size: int = 128,
) -> Iterator[tuple[str, bytes, int]]:
    """KPI records of a cell looking at synthetic parts (qc_contract.synthetic), with the drift histograms the
    cell's bridge attaches: the image statistics of every part (qc_contract.drift.image_stats) and a stable
    defect-probability distribution. `lighting(i)` is the generator's lighting for part i (a change mid-run is
    the drift test's changed light). Yields (topic, payload, parts so far); one record per `per_record` parts,
    stamped one second per part after `start_ns`."""
    import numpy as np

    from qc_contract.drift import Histograms, image_stats
    from qc_contract.synthetic import SyntheticPartGenerator

    generator = SyntheticPartGenerator(seed=seed, width=size, height=size, defect_rate=0.1)
    scores = np.random.default_rng(seed).beta(1.2, 12.0, size=parts)  # mostly low P(defective)
    hist = Histograms()
    seq = 0
    for i in range(parts):
        generator.lighting = float(lighting(i))
        hist.add(image_stats(generator.part(i).image), float(scores[i]))
        if hist.parts == per_record or i == parts - 1:
            counts, n = hist.take()
            seq += 1
            body = records.kpi(
                stamp_ns=start_ns + (i + 1) * 10**9,
                window_s=60.0,
                parts=n,
                counts={"NORMAL": n},
                yield_ratio=1.0,
                throughput_pps=1.0,
                latency_ms={"p50": 40.0, "p95": 50.0, "p99": 60.0},
                reasons={"visual_normal": n},
                total_parts=i + 1,
                distributions=records.drift_distributions(model_version=model, parts=n, counts=counts),
            )
            yield f"qc/{cell}/kpi", records.encode(records.envelope(cell, epoch, "kpi", seq, body)), i + 1


def alert_record(cell: str, epoch: str, seq: int) -> dict:
    body = records.alert(
        stamp_ns=time.time_ns(), severity=1, source="sensor_fusion", code="DRIFT", message="process drift", part_id=""
    )
    return records.envelope(cell, epoch, "alert", seq, body)


def cell_names(n: int, site: str = "plant1") -> list[str]:
    return [f"{site}/line{i % 4 + 1}/cell{i + 1:03d}" for i in range(n)]


def part_stream(cells: list[str], per_cell: int, epoch: str = "0badcafe") -> Iterator[tuple[str, bytes, str]]:
    """(topic, payload, 'cell|id') of per_cell parts of each cell, interleaved as a plant sends them."""
    for seq in range(1, per_cell + 1):
        for cell in cells:
            record = part_record(cell, epoch, seq)
            yield f"qc/{cell}/part", records.encode(record), f"{cell}|{record['id']}"


class Publisher:
    """A QoS 1 MQTT 5 publisher keeping up to `inflight` messages unacknowledged."""

    def __init__(self, host: str, port: int, inflight: int = 200, client_id: str = "") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self._acked = 0
        self._failed: list[str] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect(host, port, properties=props)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"cannot connect to {host}:{port}")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self._acked += 1
            if reason_code.is_failure:
                self._failed.append(str(reason_code))

    def publish_all(self, messages: Iterable[tuple[str, bytes]], rate: float = 0.0, timeout_s: float = 300.0) -> int:
        """Publish; rate > 0 paces them (messages/s). Returns the count once the broker acknowledged all."""
        sent = 0
        start = time.monotonic()
        for topic, payload in messages:
            if rate > 0:
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.client.publish(topic, payload, qos=1)
            sent += 1
        self.wait_acked(sent, timeout_s)
        return sent

    def wait_acked(self, count: int, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if self._acked >= count:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"only {self._acked} of {count} publishes acknowledged")

    def reset(self) -> None:
        with self._lock:
            self._acked = 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def hostile_payloads(n: int, cells: list[str], seed: int = 7) -> list[tuple[str, bytes, str]]:
    """(topic, payload, kind) of n payloads a service must refuse: random bytes, invalid UTF-8, deep nesting,
    1 MB bodies, wrong types, wrong cell, SQL metacharacters, NUL, huge numbers, NaN, bad ids and times."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cell = rng.choice(cells)
        topic = f"qc/{cell}/part"
        good = part_record(cell, "0ddba11e", i + 1)
        kind = i % 12
        if kind == 0:
            payload, label = rng.randbytes(rng.randint(1, 2000)), "random bytes"
        elif kind == 1:
            payload, label = b'{"type": "part", "cell": "\xff\xfe\xfd"}', "invalid utf-8"
        elif kind == 2:
            payload, label = b"[" * 100_000 + b"]" * 100_000, "deep nesting"
        elif kind == 3:
            payload, label = b'{"x": "' + b"A" * (1024 * 1024) + b'"}', "1 MB body"
        elif kind == 4:
            payload, label = records.encode({**good, "seq": "seven"}), "wrong type"
        elif kind == 5:
            other = next(c for c in cells if c != cell) if len(cells) > 1 else "x/y/z"
            payload, label = records.encode({**good, "cell": other}), "wrong cell"
        elif kind == 6:
            payload = records.encode({**good, "part_id": "x'); DROP TABLE parts; --", "id": "'; DELETE FROM parts; --"})
            label = "sql metacharacters"
        elif kind == 7:
            payload, label = records.encode({**good, "part_id": "a\x00b"}), "NUL character"
        elif kind == 8:
            payload, label = records.encode({**good, "encoder_count": 10**30}), "huge integer"
        elif kind == 9:
            payload = records.encode(good).replace(b'"defect_probability":', b'"defect_probability":NaN,"_":')
            label = "NaN"
        elif kind == 10:
            payload, label = records.encode({**good, "decision_time": "2025-13-45T99:99:99Z"}), "impossible time"
        else:
            topic, payload, label = f"qc/{cell}/part/../../x", records.encode(good), "unknown topic"
        out.append((topic, payload, label))
    return out
