"""The forwarder drains the outbox to the broker: oldest first, at most `window` records in flight, and
deletes a record only when its PUBACK reports success.

- Connection lost: paho resends the unacknowledged messages on reconnect (same packet ids), so the
  in-flight map stays valid; records not yet handed over wait in the outbox.
- Bridge restarted: the outbox still holds every unacknowledged record; it is all sent again from the
  oldest (a record acknowledged just before the crash may arrive twice: same id, the consumer drops it).
- PUBACK with a failure reason (MQTT 5, e.g. 0x87 not authorized by the broker's ACL): the record stays
  stored, is counted as refused and retried with backoff; nothing is dropped behind the operator's back.
- Expired records (verify requests past their deadline) are dropped unsent and counted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from qc_cell.bridge.outbox import Entry, Outbox, OutboxError
from qc_cell.bridge.session import Log, MqttSession, python_log

ACK_FLUSH_S = 0.02  # acks are deleted in batches: one commit (fsync) per batch, not per record
ACK_FLUSH_MAX = 256
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0


class Forwarder:
    def __init__(self, outbox: Outbox, session: MqttSession, window: int = 20, log: Log = python_log) -> None:
        self.outbox = outbox
        self.session = session
        self.window = window
        self.log = log
        self.counts: Counter[str] = Counter()  # published, acked, refused, expired, publish_errors
        self.last_refusal = ""
        self._inflight: dict[int, int] = {}  # mid -> outbox row id; only touched by the forwarder thread
        self._cursor = 0  # highest row id handed to paho
        self._retry: set[int] = set()  # refused row ids, resent after _retry_at
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.session.wake.set()
        self._thread.join(timeout=5)

    def notify(self) -> None:
        """A record was stored: wake up now instead of at the next poll."""
        self.session.wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        pending_acks: list[int] = []
        first_ack_at = 0.0
        while not self._stop.is_set():
            self.session.wake.wait(0.05)
            self.session.wake.clear()
            try:
                while not self.session.acks.empty():
                    ack = self.session.acks.get_nowait()
                    rowid = self._inflight.pop(ack.mid, None)
                    if rowid is None:
                        continue  # the retained status message, not an outbox record
                    if ack.failure:
                        self._refused(rowid, ack.reason)
                    else:
                        pending_acks.append(rowid)
                        first_ack_at = first_ack_at or time.monotonic()
                if pending_acks and (
                    len(pending_acks) >= ACK_FLUSH_MAX
                    or time.monotonic() - first_ack_at >= ACK_FLUSH_S
                    or self.session.acks.empty()
                ):
                    self.counts["acked"] += len(pending_acks)
                    self.outbox.ack(pending_acks)
                    pending_acks, first_ack_at = [], 0.0
                    self._retry_delay = RETRY_MIN_S if not self._retry else self._retry_delay
                if self.session.connected:
                    self._send()
            except OutboxError as exc:  # disk trouble: keep the records (acks are re-sent next time)
                self.counts["store_errors"] += 1
                self.log("error", f"outbox: {exc}")
                self._stop.wait(1.0)
        if pending_acks:
            try:
                self.outbox.ack(pending_acks)
                self.counts["acked"] += len(pending_acks)
            except OutboxError as exc:
                self.log("error", f"outbox: {exc}")

    def _refused(self, rowid: int, reason: str) -> None:
        self.counts["refused"] += 1
        if reason != self.last_refusal:
            self.log("error", f"broker refused a record ({reason}); it stays in the outbox and is retried")
        self.last_refusal = reason
        self._retry.add(rowid)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    def _send(self) -> None:
        room = min(self.window, self.session.receive_maximum) - len(self._inflight)
        if room <= 0:
            return
        entries: list[Entry] = []
        if self._retry and time.monotonic() >= self._retry_at:
            wanted = sorted(self._retry)[:room]
            entries = self.outbox.entries(wanted)  # evicted meanwhile: simply not returned
            self._retry.difference_update(wanted)
        if len(entries) < room:
            fresh = self.outbox.pending(self._cursor, room - len(entries))
            if fresh:
                self._cursor = self.outbox.handed_over_through = fresh[-1].rowid
            entries += fresh
        now_ns = time.time_ns()
        expired = [e.rowid for e in entries if e.expires_ns and e.expires_ns < now_ns]
        if expired:
            self.counts["expired"] += self.outbox.discard_expired(expired)
        for entry in entries:
            if entry.expires_ns and entry.expires_ns < now_ns:
                continue
            try:
                mid = self.session.publish(entry.topic, entry.payload, qos=entry.qos, retain=entry.retain)
            except (RuntimeError, ValueError) as exc:
                self.counts["publish_errors"] += 1
                self.log("error", f"publish of {entry.stream} #{entry.seq} failed: {exc}; retried")
                self._retry.add(entry.rowid)
                self._retry_at = time.monotonic() + self._retry_delay
                continue
            if entry.qos == 0:
                self.outbox.ack([entry.rowid])  # nothing to wait for (no stream uses QoS 0 by default)
            else:
                self._inflight[mid] = entry.rowid
            self.counts["published"] += 1
