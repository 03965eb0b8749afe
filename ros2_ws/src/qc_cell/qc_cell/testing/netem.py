"""A TCP proxy that emulates a wide-area link for tests and benchmarks (`tc netem` is missing from this kernel):
127.0.0.1:<port> -> 127.0.0.1:<target_port>, with, per direction,

- a one-way delay (half the round trip) plus jitter (uniform in +-jitter_ms, never reordering the byte stream:
  TCP delivers in order, so a chunk leaves no earlier than the one before it);
- a rate limit (bits per second): a chunk occupies the link for len * 8 / rate after the previous one left, so a
  big image queues behind the one before, as on a real constrained uplink.

`up` is client -> target (the cell's uplink to the cloud). The settings can be changed while it runs (a link that
gets worse), and byte counts are kept per direction. Each connection has one reader and one sender thread per
direction; the sender sleeps until a chunk's release time.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass
class LinkShape:
    delay_ms: float = 0.0  # one way
    jitter_ms: float = 0.0  # +- uniform, one way
    rate_bps: float = 0.0  # 0 = unlimited

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.rate_bps < 0:
            raise ValueError(f"link shape {self}: delay, jitter and rate must be >= 0")
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter {self.jitter_ms} ms > delay {self.delay_ms} ms: a packet cannot arrive early")


class DelayProxy:
    def __init__(
        self, target_port: int, up: LinkShape | None = None, down: LinkShape | None = None, seed: int = 0
    ) -> None:
        self.target_port = target_port
        self.shape = {True: up or LinkShape(), False: down or LinkShape()}
        self.bytes = {True: 0, False: 0}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="delay-proxy-accept").start()

    @classmethod
    def round_trip(cls, target_port: int, rtt_ms: float, jitter_ms: float = 0.0, up_bps: float = 0.0, seed: int = 0):
        """Half the round trip each way; the rate limit on the uplink only."""
        half = rtt_ms / 2
        return cls(target_port, LinkShape(half, jitter_ms, up_bps), LinkShape(half, jitter_ms, 0.0), seed)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                if self._server.fileno() == -1:
                    return
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            self._direction(client, upstream, True)
            self._direction(upstream, client, False)

    def _direction(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        queue: deque[tuple[float, bytes] | None] = deque()
        ready = threading.Condition()

        def read() -> None:
            last_release = 0.0
            link_free = 0.0
            try:
                while data := source.recv(65536):
                    now = time.monotonic()
                    shape = self.shape[up]
                    jitter = self._random.uniform(-shape.jitter_ms, shape.jitter_ms) if shape.jitter_ms else 0.0
                    # The link serialises bytes at rate_bps from when it is free; then the propagation delay.
                    start = max(now, link_free)
                    link_free = start + (len(data) * 8 / shape.rate_bps if shape.rate_bps else 0.0)
                    release = max(link_free + (shape.delay_ms + jitter) / 1e3, last_release)
                    last_release = release
                    with ready:
                        queue.append((release, data))
                        ready.notify()
            except OSError:
                pass
            with ready:
                queue.append(None)
                ready.notify()

        def send() -> None:
            try:
                while True:
                    with ready:
                        ready.wait_for(lambda: queue)
                        item = queue.popleft()
                    if item is None:
                        break
                    release, data = item
                    wait = release - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    with self._lock:  # counted before it is delivered: a reader never sees it uncounted
                        self.bytes[up] += len(data)
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        name = "up" if up else "down"
        threading.Thread(target=read, daemon=True, name=f"delay-proxy-{name}-read").start()
        threading.Thread(target=send, daemon=True, name=f"delay-proxy-{name}-send").start()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._server.close()
        self.cut()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
