"""The MQTT ingest worker: a thin shell around store.Store.

- MQTT 5 persistent session (clean_start=False, session expiry): what arrives while the worker is down is
  queued by the broker. Several workers share the load through a shared subscription ($share/<group>/...).
- Manual acknowledgements: a message is PUBACKed only after the transaction holding its row committed. A
  worker killed mid-batch, or a database outage, leaves the messages unacknowledged and the broker sends
  them again (to the same session on reconnect); record_ids turns each resend into a counted duplicate.
- An acknowledgement is only sent on the connection the message came in on: after a reconnect the broker
  resends everything unacknowledged anyway, and a stale message id could name a different message.
- Batches: up to batch_size messages or batch_ms after the first, one transaction.
- Retained presence (`status`) is not delivered to shared subscriptions (MQTT 5), so each worker also holds a
  plain subscription to qc/+/+/+/status (an idempotent update).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import paho.mqtt
import paho.mqtt.client as mqtt

from qc_cloud.fleet.settings import FleetSettings
from qc_cloud.fleet.store import BatchResult, Message, Store, TransientError
from qc_contract.mqtt_client import connect_properties, create_client

log = logging.getLogger("qc_fleet.ingest")


@dataclass
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_at: float


@dataclass
class WorkerStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    ignored: int = 0
    status: int = 0
    batches: int = 0
    retries: int = 0
    connected: bool = False
    last_error: str = ""
    lag_ms: deque = field(default_factory=lambda: deque(maxlen=10000))  # received -> committed


def subscriptions(settings: FleetSettings) -> list[str]:
    main = settings.topic_filter
    if settings.share_group:
        main = f"$share/{settings.share_group}/{main}"
    presence = "qc/+/+/+/status"
    return [main, presence] if presence != settings.topic_filter else [main]


class IngestWorker:
    def __init__(self, settings: FleetSettings, store: Store, index: int = 0) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.client_id = f"{settings.client_id}-{index}"
        self.broker = settings.broker(self.client_id)
        self.stats = WorkerStats()
        self._queue: queue.SimpleQueue[_Inbound] = queue.SimpleQueue()  # C-implemented: one put per message
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._subscribed = threading.Event()

    # ---- MQTT callbacks (paho's network thread) --------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.stats.last_error = f"broker refused the connection: {reason_code}"
            log.error("worker %d: %s", self.index, self.stats.last_error)
            return
        self._generation += 1
        self.stats.connected = True
        client.subscribe([(topic, 1) for topic in subscriptions(self.settings)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self.stats.last_error = f"subscription refused: {', '.join(failed)}"
            log.error("worker %d: %s", self.index, self.stats.last_error)
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.stats.connected = False

    def _on_message(self, client, userdata, message) -> None:
        self.stats.received += 1
        self._queue.put(
            _Inbound(message.topic, bytes(message.payload), message.mid, message.qos, self._generation, time.time())
        )

    # ---- life cycle ------------------------------------------------------------------------------------
    def start(self, wait_s: float = 15.0) -> IngestWorker:
        client = create_client(self.broker, inflight_window=20, paho_reconnects=True)
        client.manual_ack_set(True)
        _read_packets_per_wakeup(client, READ_PACKETS_PER_WAKEUP)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"fleet-ingest-{self.index}", daemon=True)
        self._thread.start()
        client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=False,
            properties=connect_properties(
                session_expiry_s=self.settings.session_expiry_s,
                receive_maximum=self.settings.receive_maximum,
            ),
        )
        client.loop_start()
        if wait_s and not self._subscribed.wait(wait_s):
            log.warning("worker %d: not subscribed within %.0f s (%s)", self.index, wait_s, self.stats.last_error)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful: the batch in hand is committed and acknowledged; what is still queued stays
        unacknowledged, so the broker keeps it for this session (or another worker of the group)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    @property
    def ready(self) -> bool:
        return self.stats.connected and self._subscribed.is_set()

    # ---- the batch loop --------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Inbound]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_ms / 1000
        while len(batch) < self.settings.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Inbound]) -> None:
        messages = [Message(m.topic, m.payload, _utc(m.received_at)) for m in batch]
        delay = 0.2
        while True:
            try:
                result = self.store.write(messages)
                break
            except TransientError as exc:
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                log.warning(
                    "worker %d: %s; batch of %d kept unacknowledged, retry in %.1f s",
                    self.index,
                    exc,
                    len(batch),
                    delay,
                )
                if self._stop.wait(delay):
                    return  # stopping: the broker resends the batch
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # a bug must not stop ingest; the batch stays unacknowledged
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("worker %d: batch failed", self.index)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 5.0)
        now = time.time()
        self._account(result, batch, now)
        client = self._client
        for m in batch:
            if m.qos > 0 and m.generation == self._generation and client is not None:
                client.ack(m.mid, m.qos)

    def _account(self, result: BatchResult, batch: list[_Inbound], now: float) -> None:
        s = self.stats
        s.batches += 1
        s.stored += result.stored
        s.duplicates += result.duplicates
        s.quarantined += result.quarantined
        s.ignored += result.ignored
        s.status += result.status
        s.lag_ms.extend((now - m.received_at) * 1000 for m in batch)
        for reason in result.reasons[:3]:
            log.info("worker %d: quarantined: %s", self.index, reason)


READ_PACKETS_PER_WAKEUP = 64


def _read_packets_per_wakeup(client: mqtt.Client, most: int) -> None:
    """paho-mqtt 2.1's loop_read() reads ONE packet per select() wake-up of its network thread while none of
    the client's own QoS > 0 messages are in flight (always so for a subscriber): a select() and the loop's
    upkeep per message. Read up to `most` packets per wake-up instead, until the socket would block (then
    paho's own loop resumes: PUBACKs written, keepalive kept). Left as it is on another paho version."""
    if not paho.mqtt.__version__.startswith("2.1.") or not all(
        hasattr(client, name) for name in ("_sock", "_packet_read", "_loop_rc_handle")
    ):
        return
    codes = mqtt.MQTTErrorCode

    def loop_read(max_packets: int = 1) -> mqtt.MQTTErrorCode:
        for _ in range(most):
            if client._sock is None:
                return codes.MQTT_ERR_NO_CONN
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if rc == codes.MQTT_ERR_AGAIN:
                break
        return codes.MQTT_ERR_SUCCESS

    client.loop_read = loop_read  # paho's _loop() calls self.loop_read()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None)
