"""The bridge's transport, under the CloudLink facade (cloud_link.py): outbox + MQTT session + forwarder, record
envelopes, and the accounting of records the outbox could not keep (for the OUTBOX_FULL alert)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qc_cell.bridge.forwarder import Forwarder
from qc_cell.bridge.outbox import Outbox, OutboxError, OutboxLimits, PutResult
from qc_cell.bridge.session import Log, MqttSession, python_log
from qc_contract import records
from qc_contract.broker import BrokerConfig
from qc_contract.topics import CellId


@dataclass(frozen=True)
class BridgeSettings:
    cell: CellId
    broker: BrokerConfig
    outbox_path: str
    limits: OutboxLimits = field(default_factory=OutboxLimits)
    synchronous: str = "FULL"
    inflight_window: int = 20
    max_packet_bytes: int = 0  # largest inbound packet (0 = no limit); the broker drops bigger ones
    subscriptions: tuple[str, ...] = ()


class LossLedger:
    """Records the outbox could not keep, by stream and reason, until someone reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.total = 0

    def note(self, stream: str, seq: int, reason: str) -> None:
        with self._lock:
            self._seqs[(stream, reason)].append(seq)
            self.total += 1

    def take(self) -> str:
        """'part #10-25, #31 (evicted: drop_oldest); sample #4 (stream_quota)' since the last call, or ''."""
        with self._lock:
            seqs, self._seqs = self._seqs, defaultdict(list)
        return "; ".join(f"{stream} {_ranges(sorted(s))} ({reason})" for (stream, reason), s in sorted(seqs.items()))


def _ranges(seqs: list[int]) -> str:
    out, start, prev = [], None, None
    for s in [*seqs, None]:
        if start is not None and (s is None or s != prev + 1):
            out.append(f"#{start}" if start == prev else f"#{start}-{prev}")
            start = None
        if s is not None and start is None:
            start = s
        prev = s
    return ", ".join(out)


class Bridge:
    def __init__(
        self, settings: BridgeSettings, on_message: Callable[[str, bytes], None] | None = None, log: Log = python_log
    ) -> None:
        self.settings = settings
        self.cell = settings.cell
        self.log = log
        self.losses = LossLedger()
        self.outbox = Outbox(settings.outbox_path, settings.limits, settings.synchronous)
        self.session = MqttSession(
            settings.broker,
            settings.cell,
            subscriptions=settings.subscriptions,
            on_message=on_message,
            inflight_window=settings.inflight_window,
            max_packet_bytes=settings.max_packet_bytes,
            status_details=self.status_details,
            log=log,
        )
        self.forwarder = Forwarder(self.outbox, self.session, settings.inflight_window, log)
        self.store_failures = 0

    def start(self) -> None:
        self.forwarder.start()
        self.session.start()

    def stop(self, reason: str = "shutdown") -> None:
        self.forwarder.stop()
        self.session.stop(reason)
        self.outbox.close()

    @property
    def connected(self) -> bool:
        return self.session.connected

    def send(
        self,
        stream: str,
        body: Mapping[str, Any],
        *,
        retain: bool = False,
        expires_ns: int = 0,
        key: str | None = None,
    ) -> PutResult:
        """Store one record (envelope added here) for publishing. Never raises: a record that cannot be
        kept is counted in `losses` with its sequence number and reason. A record whose key was stored before
        is not stored again (reason "duplicate", not a loss)."""
        cell, epoch = self.cell.path, self.outbox.epoch
        try:
            result = self.outbox.put(
                stream,
                self.cell.stream_topic(stream),
                lambda seq: records.encode(records.envelope(cell, epoch, stream, seq, body)),
                retain=retain,
                expires_ns=expires_ns,
                key=key,
            )
        except OutboxError as exc:
            self.store_failures += 1
            self.losses.note(stream, self.outbox.last_seq(stream), "store_failed")
            self.log("error", f"{stream} record lost: {exc}")
            return PutResult(None, "store_failed")
        for old_stream, old_seq in result.evicted:
            self.losses.note(old_stream, old_seq, f"evicted: {self.settings.limits.policy}")
        if not result.accepted and result.reason != "duplicate":
            self.losses.note(stream, self.outbox.last_seq(stream), result.reason)
        self.forwarder.notify()
        return result

    def health(self) -> dict[str, Any]:
        fwd, box, ses = self.forwarder.counts, self.outbox.counts, self.session.counts
        return {
            "connected": self.connected,
            "broker": self.settings.broker.url,
            "last_error": self.session.last_error,
            "outbox_depth": self.outbox.depth,
            "outbox_bytes": self.outbox.bytes,
            "outbox_oldest_s": round(self.outbox.oldest_age_s(), 1),
            "outbox_policy": self.settings.limits.policy,
            "inflight": self.forwarder.inflight,
            "published": fwd["published"],
            "acked": fwd["acked"],
            "refused": fwd["refused"],
            "last_refusal": self.forwarder.last_refusal,
            "expired": fwd["expired"],
            "evicted": box["evicted"],
            "rejected": box["rejected"],
            "store_failed": self.store_failures,
            "lost_total": self.losses.total,
            "connects": ses["connects"],
            "disconnects": ses["disconnects"],
            "connect_failures": ses["connect_failures"] + ses["connect_refused"],
        }

    def status_details(self) -> dict[str, Any]:
        """What the retained online status carries (no secrets, no broker address)."""
        health = self.health()
        keys = ("outbox_depth", "outbox_oldest_s", "evicted", "rejected", "refused", "lost_total")
        return {"epoch": self.outbox.epoch, **{k: health[k] for k in keys}}
