"""SQLite store of the records a cell sent (written by `qc_cloud watch`, read by `qc_cloud gaps`).

Each record is kept once per (cell, id): a QoS 1 redelivery is counted as a duplicate, not stored twice.
Payloads that are not valid records are kept in `invalid` with the reason, never dropped silently.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jsonschema import ValidationError

from qc_contract import schemas

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    cell TEXT NOT NULL, type TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
    topic TEXT NOT NULL, received_ns INTEGER NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (cell, id)
);
CREATE INDEX IF NOT EXISTS records_stream ON records (cell, type, epoch, seq);
CREATE TABLE IF NOT EXISTS duplicates (cell TEXT NOT NULL, id TEXT NOT NULL, received_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invalid (topic TEXT NOT NULL, received_ns INTEGER NOT NULL, reason TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS status (cell TEXT PRIMARY KEY, received_ns INTEGER NOT NULL, payload TEXT NOT NULL);
"""
STREAM_TYPES = ("part", "kpi", "alert", "reject", "process", "model_status", "sample", "verify_request", "verify")


@dataclass(frozen=True)
class Gap:
    cell: str
    type: str
    epoch: str
    first: int  # missing sequence numbers first..last
    last: int

    def __str__(self) -> str:
        span = f"#{self.first}" if self.first == self.last else f"#{self.first}-{self.last}"
        return f"{self.cell} {self.type} (epoch {self.epoch}): missing {span} ({self.last - self.first + 1})"


class SummaryStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, topic: str, payload: bytes, received_ns: int | None = None) -> str:
        """Store one MQTT message; returns 'stored', 'duplicate', 'status' or 'invalid: <reason>'."""
        now = received_ns or time.time_ns()
        try:
            record = json.loads(payload)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            kind = record.get("type")
            if kind not in (*STREAM_TYPES, "status"):
                raise ValueError(f"unknown record type {kind!r}")
            schemas.validator(kind).validate(record)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._invalid(topic, payload, now, f"not JSON: {exc}")
        except ValidationError as exc:
            return self._invalid(topic, payload, now, f"schema {kind}: {exc.message[:300]}")
        text = payload.decode()
        with self._db:
            if kind == "status":
                self._db.execute(
                    "INSERT OR REPLACE INTO status (cell, received_ns, payload) VALUES (?, ?, ?)",
                    (record["cell"], now, text),
                )
                return "status"
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO records (cell, type, epoch, seq, id, topic, received_ns, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record["cell"], kind, record["epoch"], record["seq"], record["id"], topic, now, text),
            )
            if cursor.rowcount == 0:
                self._db.execute(
                    "INSERT INTO duplicates (cell, id, received_ns) VALUES (?, ?, ?)",
                    (record["cell"], record["id"], now),
                )
                return "duplicate"
        return "stored"

    def _invalid(self, topic: str, payload: bytes, now: int, reason: str) -> str:
        with self._db:
            self._db.execute(
                "INSERT INTO invalid (topic, received_ns, reason, payload) VALUES (?, ?, ?, ?)",
                (topic, now, reason, payload),
            )
        return f"invalid: {reason}"

    def counts(self) -> dict[str, int]:
        one = self._db.execute
        return {
            "records": one("SELECT COUNT(*) FROM records").fetchone()[0],
            "duplicates": one("SELECT COUNT(*) FROM duplicates").fetchone()[0],
            "invalid": one("SELECT COUNT(*) FROM invalid").fetchone()[0],
        }

    def streams(self, cell: str | None = None, kind: str | None = None) -> list[tuple[str, str, str, int, int, int]]:
        """(cell, type, epoch, records, first seq, last seq) per stream."""
        return self._db.execute(
            "SELECT cell, type, epoch, COUNT(*), MIN(seq), MAX(seq) FROM records "
            "WHERE (? IS NULL OR cell = ?) AND (? IS NULL OR type = ?) GROUP BY cell, type, epoch ORDER BY 1, 2, 3",
            (cell, cell, kind, kind),
        ).fetchall()

    def gaps(self, cell: str | None = None, kind: str | None = None, from_first_seen: bool = False) -> list[Gap]:
        """Missing sequence numbers per (cell, type, epoch), from 1 (or the first stored) to the last stored."""
        gaps = []
        for cell_, kind_, epoch, _, first, _ in self.streams(cell, kind):
            expected = first if from_first_seen else 1
            for (seq,) in self._seqs(cell_, kind_, epoch):
                if seq > expected:
                    gaps.append(Gap(cell_, kind_, epoch, expected, seq - 1))
                expected = seq + 1
        return gaps

    def _seqs(self, cell: str, kind: str, epoch: str) -> Iterator[tuple[int]]:
        return self._db.execute(
            "SELECT seq FROM records WHERE cell = ? AND type = ? AND epoch = ? ORDER BY seq", (cell, kind, epoch)
        )

    def records(self, kind: str, cell: str | None = None) -> list[dict]:
        rows = self._db.execute(
            "SELECT payload FROM records WHERE type = ? AND (? IS NULL OR cell = ?) ORDER BY epoch, seq",
            (kind, cell, cell),
        )
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()
