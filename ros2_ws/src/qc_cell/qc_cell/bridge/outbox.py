"""The durable outbox: every outbound record is stored here before it is published, and deleted only
after the broker acknowledged it (QoS 1 PUBACK). paho keeps its queue only in memory, so this is what
carries records through a broker outage and a restart of the bridge.

SQLite in WAL mode, synchronous=FULL by default (a committed record survives power loss). Records are
replayed in insertion order (AUTOINCREMENT row ids are never reused). Each stream (part, kpi, alert, ...)
has its own sequence 1, 2, 3, ... so a consumer can find gaps; a record the outbox could not keep
(full policy, stream quota) still uses up its number, so every loss is visible as a gap in the cloud,
as well as counted here and alerted by the caller.

A record may carry a key (the part summary: part id and decision time). A key is stored once: putting it
again is refused as a duplicate, without using up a sequence number. The last KEYS_KEPT keys are remembered,
also after their records were acknowledged, so a restarted bridge can take the decision node's history of
verdicts and send exactly those its predecessor never stored.

Full policy (bounded by record count and bytes):
- drop_oldest: evict the oldest records to make room (the newest state wins). Records already handed to the
  broker (`handed_over_through`, set by the forwarder) go last: they are on their way or acknowledged and about
  to be deleted, and evicting one would report a loss of a record the cloud gets;
- reject_new:  keep what is stored, refuse the new record.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

FULL_POLICIES = ("drop_oldest", "reject_new")
KEYS_KEPT = 10_000  # ten times the decision node's verdict history (qos.PART_RECORDS)
SYNCHRONOUS = ("FULL", "NORMAL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS record_keys (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE);
"""


class OutboxError(RuntimeError):
    """The store failed (disk full, I/O error, corrupt file): the record was NOT stored."""


@dataclass(frozen=True)
class Entry:
    rowid: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ns: int
    expires_ns: int  # 0 = never; else wall-clock ns after which the record is worthless (verify requests)


@dataclass(frozen=True)
class PutResult:
    entry: Entry | None  # None: not stored
    reason: str = ""  # why not stored: full (reject_new), too_large, stream_quota; duplicate (key stored before)
    evicted: tuple[tuple[str, int], ...] = ()  # (stream, seq) dropped to make room (drop_oldest)

    @property
    def accepted(self) -> bool:
        return self.entry is not None


@dataclass
class OutboxLimits:
    max_records: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    policy: str = "drop_oldest"
    # Per-stream quota for bulky, expendable streams (images): refused beyond it, and never evicting others.
    stream_max_bytes: Mapping[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        if self.policy not in FULL_POLICIES:
            raise ValueError(f"outbox full policy {self.policy!r} must be one of {FULL_POLICIES}")
        if self.max_records < 1 or self.max_bytes < 1024:
            raise ValueError("outbox limits must allow at least 1 record and 1 KiB")


class Outbox:
    def __init__(self, path: str | Path, limits: OutboxLimits | None = None, synchronous: str = "FULL") -> None:
        self.limits = limits or OutboxLimits()
        self.limits.validate()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous {synchronous!r} must be one of {SYNCHRONOUS}")
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self.handed_over_through = 0  # highest row id the forwarder handed to the broker (this process)
        self.counts: Counter[str] = Counter()  # put, acked, evicted, rejected, expired, duplicate (since open)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"outbox {self.path}: cannot enable WAL (journal_mode={mode})")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            self.epoch = self._epoch()
            self._records, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records"
            ).fetchone()
            self._stream_bytes: Counter[str] = Counter(
                dict(self._db.execute("SELECT stream, SUM(LENGTH(payload)) FROM records GROUP BY stream").fetchall())
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def _epoch(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row:
            return row[0]
        epoch = secrets.token_hex(4)
        self._db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    # -- producer side ---------------------------------------------------------------------------------

    def put(
        self,
        stream: str,
        topic: str,
        build: Callable[[int], bytes],
        *,
        qos: int = 1,
        retain: bool = False,
        expires_ns: int = 0,
        key: str | None = None,
    ) -> PutResult:
        """Allocate the stream's next sequence number, build the payload with it, store it (one transaction).

        The sequence number is used up even when the record is refused, so the loss shows as a gap; not when
        the key was stored before (a duplicate is no loss)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result, evicted_sizes = self._put_locked(stream, topic, build, qos, retain, expires_ns, key)
                    self._db.execute("COMMIT")
                except BaseException:  # also KeyboardInterrupt: never leave a transaction open
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self.counts["store_failed"] += 1
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self._apply(result, evicted_sizes)
            return result

    def _put_locked(
        self,
        stream: str,
        topic: str,
        build: Callable[[int], bytes],
        qos: int,
        retain: bool,
        expires_ns: int,
        key: str | None,
    ) -> tuple[PutResult, list[tuple[str, int]]]:
        if key is not None and self._db.execute("SELECT 1 FROM record_keys WHERE key = ?", (key,)).fetchone():
            return PutResult(None, "duplicate"), []
        row = self._db.execute("SELECT last_seq FROM sequences WHERE stream = ?", (stream,)).fetchone()
        seq = (row[0] if row else 0) + 1
        self._db.execute(
            "INSERT INTO sequences (stream, last_seq) VALUES (?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq",
            (stream, seq),
        )
        payload = build(seq)
        size = len(payload)
        limits = self.limits
        quota = limits.stream_max_bytes.get(stream)
        if size > limits.max_bytes:
            return PutResult(None, "too_large"), []
        if quota is not None and self._stream_bytes[stream] + size > quota:
            return PutResult(None, "stream_quota"), []
        evicted: list[tuple[int, str, int, int]] = []
        records, nbytes = self._records, self._bytes
        if records + 1 > limits.max_records or nbytes + size > limits.max_bytes:
            # A stream with a quota (images) is expendable: it never evicts the records of other streams.
            if limits.policy == "reject_new" or quota is not None:
                return PutResult(None, "full"), []
            # Two range scans on the primary key (a sort of a million-record outbox on every put would not do).
            handed = self.handed_over_through
            for where in ("id > ?", "id <= ?"):
                for rowid, old_stream, old_seq, old_size in self._db.execute(
                    f"SELECT id, stream, seq, LENGTH(payload) FROM records WHERE {where} ORDER BY id", (handed,)
                ):
                    if records + 1 <= limits.max_records and nbytes + size <= limits.max_bytes:
                        break
                    evicted.append((rowid, old_stream, old_seq, old_size))
                    records -= 1
                    nbytes -= old_size
            self._db.executemany("DELETE FROM records WHERE id = ?", [(e[0],) for e in evicted])
        if key is not None:  # only for a stored record: a refused one may still come again and be kept then
            key_id = self._db.execute("INSERT INTO record_keys (key) VALUES (?)", (key,)).lastrowid
            self._db.execute("DELETE FROM record_keys WHERE id <= ?", (key_id - KEYS_KEPT,))
        now = time.time_ns()
        cursor = self._db.execute(
            "INSERT INTO records (stream, seq, topic, payload, qos, retain, created_ns, expires_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, seq, topic, payload, qos, int(retain), now, expires_ns),
        )
        entry = Entry(cursor.lastrowid, stream, seq, topic, payload, qos, retain, now, expires_ns)
        return PutResult(entry, evicted=tuple((s, q) for _, s, q, _ in evicted)), [(s, n) for _, s, _, n in evicted]

    def _apply(self, result: PutResult, evicted_sizes: list[tuple[str, int]]) -> None:
        """Update the in-memory totals after a committed put."""
        for stream, size in evicted_sizes:
            self._records -= 1
            self._bytes -= size
            self._stream_bytes[stream] -= size
        self.counts["evicted"] += len(result.evicted)
        if result.reason == "duplicate":
            self.counts["duplicate"] += 1
            return
        if result.entry is None:
            self.counts["rejected"] += 1
            self.counts[f"rejected_{result.reason}"] += 1
            return
        self.counts["put"] += 1
        self._records += 1
        self._bytes += len(result.entry.payload)
        self._stream_bytes[result.entry.stream] += len(result.entry.payload)

    # -- consumer side ---------------------------------------------------------------------------------

    def pending(self, after_rowid: int = 0, limit: int = 100) -> list[Entry]:
        """The next stored records after a row id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, seq, topic, payload, qos, retain, created_ns, expires_ns FROM records "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_rowid, limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    def entries(self, rowids: list[int]) -> list[Entry]:
        """The stored records among these row ids, oldest first."""
        if not rowids:
            return []
        marks = ",".join("?" * len(rowids))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, seq, topic, payload, qos, retain, created_ns, expires_ns FROM records "
                f"WHERE id IN ({marks}) ORDER BY id",
                rowids,
            ).fetchall()
        return [_entry(r) for r in rows]

    def ack(self, rowids: Iterable[int]) -> int:
        """Delete acknowledged records (one transaction); returns how many were still stored."""
        return self._delete(list(rowids), "acked")

    def discard_expired(self, rowids: Iterable[int]) -> int:
        """Delete records whose expiry passed before they could be sent (counted as expired)."""
        return self._delete(list(rowids), "expired")

    def _delete(self, rowids: list[int], counter: str) -> int:
        if not rowids:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    gone = []
                    for start in range(0, len(rowids), 500):
                        chunk = rowids[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        gone += self._db.execute(
                            f"SELECT stream, LENGTH(payload) FROM records WHERE id IN ({marks})", chunk
                        ).fetchall()
                        self._db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
                    self._db.execute("COMMIT")
                except BaseException:  # also KeyboardInterrupt: never leave a transaction open
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self.counts["store_failed"] += 1
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            for stream, size in gone:
                self._records -= 1
                self._bytes -= size
                self._stream_bytes[stream] -= size
            self.counts[counter] += len(gone)
            return len(gone)

    # -- state -----------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._records

    @property
    def bytes(self) -> int:
        return self._bytes

    def stream_bytes(self, stream: str) -> int:
        return self._stream_bytes[stream]

    def oldest_age_s(self) -> float:
        with self._lock:
            if self._closed:
                return 0.0
            row = self._db.execute("SELECT created_ns FROM records ORDER BY id LIMIT 1").fetchone()
        return (time.time_ns() - row[0]) / 1e9 if row else 0.0

    def last_seq(self, stream: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT last_seq FROM sequences WHERE stream = ?", (stream,)).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()


def _entry(row: tuple) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], bool(row[6]), row[7], row[8])
