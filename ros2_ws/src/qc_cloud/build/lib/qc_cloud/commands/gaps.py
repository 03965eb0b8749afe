"""`qc_cloud gaps`: check the records stored by `qc_cloud watch` for missing sequence numbers.

Every record stream of a cell (part, kpi, alert, ...) is numbered 1, 2, 3, ... per outbox epoch; a gap is a
record the cloud never received (lost, or refused by the cell's full outbox: its alerts say which). Exit
status 1 when there is a gap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qc_cloud.summary_store import STREAM_TYPES, SummaryStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gaps", help="find missing sequence numbers in stored records", description=__doc__)
    p.add_argument("--db", type=Path, required=True, help="SQLite file written by `qc_cloud watch`")
    p.add_argument("--cell", help="only this cell (site/line/cell)")
    p.add_argument("--type", choices=STREAM_TYPES, help="only this record type (e.g. part)")
    p.add_argument("--from-first-seen", action="store_true", help="count from the first stored number, not 1")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    if not args.db.exists():
        print(f"error: {args.db} does not exist")
        return 2
    store = SummaryStore(args.db)
    try:
        streams = store.streams(args.cell, args.type)
        gaps = store.gaps(args.cell, args.type, args.from_first_seen)
        counts = store.counts()
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "streams": [
                        dict(zip(("cell", "type", "epoch", "records", "first", "last"), s, strict=True))
                        for s in streams
                    ],
                    "gaps": [g.__dict__ for g in gaps],
                    "missing": sum(g.last - g.first + 1 for g in gaps),
                    **counts,
                },
                indent=2,
            )
        )
    else:
        for cell, kind, epoch, n, first, last in streams:
            print(f"{cell} {kind} (epoch {epoch}): {n} records, #{first}..#{last}")
        for gap in gaps:
            print(f"GAP {gap}")
        missing = sum(g.last - g.first + 1 for g in gaps)
        print(f"{missing} missing, {counts['duplicates']} duplicates dropped, {counts['invalid']} invalid payloads")
    return 1 if gaps else 0
