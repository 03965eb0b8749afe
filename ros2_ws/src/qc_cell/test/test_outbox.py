"""The durable outbox (plain pytest, real SQLite files): order, sequence numbers, durability across a
reopen and a killed process, the configured policy when full, and keys stored once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from qc_cell.bridge import outbox
from qc_cell.bridge.bridge import LossLedger
from qc_cell.bridge.outbox import Outbox, OutboxLimits


def _put(box: Outbox, stream: str, text: str = "x", **kw):
    return box.put(stream, f"qc/s/l/c/{stream}", lambda seq: f"{stream}:{seq}:{text}".encode(), **kw)


def test_records_replay_in_insertion_order_with_per_stream_sequences(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for stream in ("part", "kpi", "part", "alert", "part"):
        _put(box, stream)
    pending = box.pending()
    assert [(e.stream, e.seq) for e in pending] == [("part", 1), ("kpi", 1), ("part", 2), ("alert", 1), ("part", 3)]
    assert [e.payload for e in pending][:2] == [b"part:1:x", b"kpi:1:x"]
    assert box.depth == 5 and box.bytes == sum(len(e.payload) for e in pending)
    assert box.ack([pending[0].rowid, pending[2].rowid]) == 2
    assert [(e.stream, e.seq) for e in box.pending()] == [("kpi", 1), ("alert", 1), ("part", 3)]
    assert [e.seq for e in box.pending(after_rowid=pending[1].rowid)] == [1, 3]
    assert box.counts["put"] == 5 and box.counts["acked"] == 2


def test_wal_mode_and_full_sync(tmp_path):
    Outbox(tmp_path / "o.db").close()
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_keeps_records_epoch_and_numbering(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for _ in range(3):
        _put(box, "part")
    box.ack([box.pending()[0].rowid])
    epoch = box.epoch
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.epoch == epoch and again.depth == 2
    assert _put(again, "part").entry.seq == 4, "numbering continues after a restart (no reuse, no reset)"
    assert [e.seq for e in again.pending()] == [2, 3, 4]


def test_a_killed_process_loses_no_committed_record(tmp_path):
    script = f"""
import os, signal
from qc_cell.bridge.outbox import Outbox
box = Outbox({str(tmp_path / "o.db")!r})
for i in range(200):
    box.put("part", "t", lambda seq: b"p%d" % seq)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    box = Outbox(tmp_path / "o.db")
    assert [e.seq for e in box.pending(limit=1000)] == list(range(1, 201))


def test_drop_oldest_evicts_the_oldest_and_reports_them(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_records=5, policy="drop_oldest"))
    results = [_put(box, "part") for _ in range(8)]
    assert all(r.accepted for r in results)
    assert [r.evicted for r in results[5:]] == [(("part", 1),), (("part", 2),), (("part", 3),)]
    assert [e.seq for e in box.pending()] == [4, 5, 6, 7, 8] and box.depth == 5
    assert box.counts["evicted"] == 3


def test_drop_oldest_evicts_records_handed_to_the_broker_last(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_records=4, policy="drop_oldest"))
    for _ in range(4):
        _put(box, "part")
    box.handed_over_through = box.pending()[1].rowid  # 1 and 2 are in flight (or acknowledged, not yet deleted)
    assert _put(box, "part").evicted == (("part", 3),)
    assert _put(box, "part").evicted == (("part", 4),)
    box.handed_over_through = box.pending()[-1].rowid
    assert _put(box, "part").evicted == (("part", 1),), "all handed over: the oldest goes"


def test_reject_new_keeps_the_stored_records_and_uses_up_the_number(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_records=5, policy="reject_new"))
    results = [_put(box, "part") for _ in range(8)]
    assert [r.accepted for r in results] == [True] * 5 + [False] * 3
    assert {r.reason for r in results[5:]} == {"full"}
    assert [e.seq for e in box.pending()] == [1, 2, 3, 4, 5]
    box.ack([box.pending()[0].rowid])
    # The refused records 6..8 leave a gap the cloud can see.
    assert _put(box, "part").entry.seq == 9
    assert box.counts["rejected"] == 3 and box.counts["rejected_full"] == 3


def test_byte_bound_record_too_large_and_stream_quota(tmp_path):
    limits = OutboxLimits(max_records=1000, max_bytes=2048, policy="drop_oldest", stream_max_bytes={"sample": 1000})
    box = Outbox(tmp_path / "o.db", limits)
    for _ in range(4):
        assert _put(box, "part", "y" * 600).accepted
    assert box.bytes <= 2048 and box.depth == 3 and box.counts["evicted"] == 1
    assert _put(box, "part", "z" * 5000).reason == "too_large"
    assert _put(box, "sample", "s" * 600).reason == "full", "an image sample must never evict a part record"
    assert [e.seq for e in box.pending()] == [2, 3, 4]
    box.ack([e.rowid for e in box.pending()])
    assert _put(box, "sample", "s" * 600).accepted
    assert _put(box, "sample", "s" * 600).reason == "stream_quota"


def test_expired_records_are_discarded_and_counted(tmp_path):
    box = Outbox(tmp_path / "o.db")
    old = _put(box, "verify_request", expires_ns=time.time_ns() - 1).entry
    assert box.discard_expired([old.rowid]) == 1
    assert box.depth == 0 and box.counts["expired"] == 1


def test_a_key_is_stored_once_across_acks_and_reopens_without_using_up_a_number(tmp_path):
    box = Outbox(tmp_path / "o.db")
    assert _put(box, "part", key="p1@100").entry.seq == 1
    duplicate = _put(box, "part", key="p1@100")
    assert not duplicate.accepted and duplicate.reason == "duplicate"
    assert _put(box, "part", key="p1@200").entry.seq == 2, "the same part id decided again is another record"
    box.ack([e.rowid for e in box.pending()])
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert _put(again, "part", key="p1@100").reason == "duplicate", "remembered after the ack and a restart"
    assert _put(again, "part").entry.seq == 3, "a duplicate is no loss: no gap in the numbering"
    assert again.counts["duplicate"] == 1 and again.counts["rejected"] == 0


def test_a_refused_record_keeps_no_key_and_old_keys_are_forgotten(tmp_path, monkeypatch):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_records=1, policy="reject_new"))
    assert _put(box, "part", key="a").accepted
    assert _put(box, "part", key="b").reason == "full"
    box.ack([e.rowid for e in box.pending()])
    assert _put(box, "part", key="b").accepted, "refused before, so it may be stored when it comes again"
    monkeypatch.setattr(outbox, "KEYS_KEPT", 3)
    for key in ("c", "d", "e"):
        box.ack([e.rowid for e in box.pending()])
        assert _put(box, "part", key=key).accepted
    box.ack([e.rowid for e in box.pending()])
    assert _put(box, "part", key="b").accepted, "only the last KEYS_KEPT keys are remembered"
    box.ack([e.rowid for e in box.pending()])
    assert _put(box, "part", key="e").reason == "duplicate"


def test_bad_limits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="policy"):
        Outbox(tmp_path / "o.db", OutboxLimits(policy="block"))


def test_loss_ledger_reports_ranges_once():
    ledger = LossLedger()
    for seq in (3, 4, 5, 9):
        ledger.note("part", seq, "evicted: drop_oldest")
    ledger.note("sample", 2, "stream_quota")
    assert ledger.take() == "part #3-5, #9 (evicted: drop_oldest); sample #2 (stream_quota)"
    assert ledger.take() == "" and ledger.total == 5
