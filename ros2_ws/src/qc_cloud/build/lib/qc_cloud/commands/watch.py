"""`qc_cloud watch`: subscribe to a cell's (or all cells') records and store them into SQLite.

Uses a persistent MQTT session (--session-expiry), so a broker with persistence keeps queueing the
records while the watcher is down. Duplicates (QoS 1 redeliveries) are recognised by record id and
counted; invalid payloads are stored with the reason. Check the result with `qc_cloud gaps`.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from qc_cloud.cell_link import LinkError, add_broker_arguments, add_cell_arguments, broker_from_args, close, connect
from qc_cloud.summary_store import SummaryStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="store a cell's MQTT records into SQLite", description=__doc__)
    p.add_argument("--db", type=Path, required=True, help="SQLite file (created if missing)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--session-expiry", type=int, default=86400, help="broker keeps our session this long (s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_cell_arguments(p, wildcards=True)
    add_broker_arguments(p)
    p.set_defaults(func=watch)


class Watcher:
    """The watch loop's state, usable from tests: start(), then counts / store, then stop()."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.store = SummaryStore(args.db)
        self.topic = f"qc/{args.site}/{args.line}/{args.cell}/#"
        self.broker = broker_from_args(args, f"qc-cloud-watch-{args.site}-{args.line}-{args.cell}".replace("+", "all"))
        self.session_expiry = args.session_expiry
        self.counts = {"stored": 0, "duplicate": 0, "status": 0, "invalid": 0}
        self._lock = threading.Lock()
        self._client = None

    def _on_message(self, client, userdata, message) -> None:
        cloud_topics = ("/model/update", "/verify/response", "/verify/verification")
        if "/model/chunk/" in message.topic or message.topic.endswith(cloud_topics):
            return  # the cloud's own messages (to the cell, and the verifier's records for the fleet service)
        with self._lock:
            outcome = self.store.add(message.topic, bytes(message.payload))
            self.counts[outcome.split(":")[0]] += 1

    def start(self) -> None:
        self._client = connect(
            self.broker,
            subscriptions=(self.topic,),
            on_message=self._on_message,
            persistent_session_s=self.session_expiry,
        )

    def stop(self) -> None:
        if self._client is not None:
            close(self._client)
            self._client = None
        with self._lock:
            self.store.close()


def watch(args: argparse.Namespace) -> int:
    try:
        watcher = Watcher(args)
        watcher.start()
    except LinkError as exc:
        print(f"error: {exc}")
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # SIGTERM (systemd, docker stop): a clean stop
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"watching {watcher.topic} on {watcher.broker.url} -> {args.db}")
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(min(5.0, max(0.0, deadline - time.monotonic())))
            if not args.quiet:
                counts = watcher.counts
                print(f"stored {counts['stored']}, duplicates {counts['duplicate']}, invalid {counts['invalid']}")
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    print(f"done: {watcher.counts}")
    return 0
