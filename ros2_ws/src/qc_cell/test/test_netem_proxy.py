"""The benchmark's link emulator (qc_cell.testing.netem.DelayProxy): delay, jitter without reordering, and the
uplink rate limit. Lower bounds are exact (nothing can arrive before its delay); upper bounds are loose, for a
loaded machine."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from qc_cell.testing.netem import DelayProxy, LinkShape


def echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def pump(c=conn) -> None:
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=pump, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return bytes(out)


def test_a_round_trip_takes_the_configured_delay():
    server, port = echo_server()
    with DelayProxy.round_trip(port, rtt_ms=80) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
        times = []
        for _ in range(5):
            start = time.monotonic()
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
            times.append((time.monotonic() - start) * 1e3)
        assert min(times) >= 80
        assert sorted(times)[2] < 80 + 400, times
        assert proxy.bytes == {True: 20, False: 20}
    server.close()


def test_jitter_never_reorders_the_stream():
    server, port = echo_server()
    proxy = DelayProxy.round_trip(port, rtt_ms=40, jitter_ms=15, seed=3)
    with proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
        payload = b"".join(i.to_bytes(4, "big") for i in range(2000))
        for i in range(0, len(payload), 400):
            c.sendall(payload[i : i + 400])
            time.sleep(0.001)
        assert recv_exactly(c, len(payload)) == payload
    server.close()


def test_the_uplink_rate_limit_serialises_big_messages():
    server, port = echo_server()
    rate = 2_000_000  # 2 Mbit/s: 100 kB take 400 ms
    proxy = DelayProxy.round_trip(port, rtt_ms=10, up_bps=rate)
    with proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
        start = time.monotonic()
        c.sendall(b"x" * 100_000)
        recv_exactly(c, 100_000)
        elapsed = time.monotonic() - start
    assert elapsed >= 0.4 + 0.01
    assert elapsed < 0.4 + 3.0
    server.close()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="jitter"):
        LinkShape(delay_ms=5, jitter_ms=10)
    with pytest.raises(ValueError, match=">= 0"):
        LinkShape(rate_bps=-1)
