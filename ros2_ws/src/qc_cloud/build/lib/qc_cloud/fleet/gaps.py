"""Per-stream sequence gaps, without I/O. A stream is (cell, type, epoch); seq runs 1, 2, 3, ... A gap is a
range of sequence numbers not received (yet): it opens when a record arrives beyond the highest seen + 1,
and shrinks, splits or closes when a late record fills it (a replay after an outage arrives in order, but a
second worker may commit an earlier batch later)."""

from __future__ import annotations

from collections.abc import Iterable


def apply(max_seq: int, gaps: Iterable[tuple[int, int]], new_seqs: Iterable[int]) -> tuple[int, list[tuple[int, int]]]:
    """(highest seq seen, open gaps [(first, last)]) + newly stored seqs -> the new (highest, gaps).
    new_seqs are seqs stored for the first time (duplicates already dropped)."""
    ranges = sorted(gaps)
    for seq in sorted(set(new_seqs)):
        if seq > max_seq:
            if seq > max_seq + 1:
                ranges.append((max_seq + 1, seq - 1))
            max_seq = seq
            continue
        for i, (first, last) in enumerate(ranges):
            if first <= seq <= last:
                replacement = [(a, b) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
                ranges[i : i + 1] = replacement
                break
    return max_seq, sorted(ranges)


def missing(gaps: Iterable[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in gaps)
