"""A local mosquitto broker for the demo (`make demo`) and the tests: a real broker on a free loopback port,
restartable for outages, and a subscriber that records everything reaching it (the demo's stand-in for the
cloud, which the run report counts). Test-only extras (PKI, TLS, ACL, passwords, a TCP proxy) are in
qc_cell.testing.mosquitto."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None
    )


class Mosquitto:
    """mosquitto -c <generated config>. `extra_config` lines are appended (TLS listener, ACL, auth...).

    Restartable on the same port (stop()/start()), for outage tests. Persistence is off by default; with
    persistence=True, retained messages, persistent sessions and their queued messages survive a restart
    (mosquitto writes its database on a clean stop).
    """

    def __init__(
        self, port: int | None = None, extra_config: str = "", workdir: Path | None = None, persistence: bool = False
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed: run `make setup` (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="qc-mosquitto-"))
        self.config = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.config.write_text(
            "\n".join(
                [
                    "user root",  # as root mosquitto would otherwise drop to a user that cannot read our files
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true" if persistence else "persistence false",
                    f"persistence_location {self.workdir}/",
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    extra_config,
                    "",
                ]
            )
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()} {self._log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s: {self._log_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self):
        import json

        return json.loads(self.payload)


class Subscriber:
    """A test 'cloud': an MQTT 5 client subscribed (QoS 1) to `topic`, recording every message. Returns only
    once the broker acknowledged the subscription, so nothing published afterwards can be missed."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "qc/#",
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        session_id: str | None = None,
    ) -> None:
        """session_id: a persistent MQTT session under that client id, so QoS 1 messages published while this
        subscriber is disconnected (e.g. during a broker restart with persistence) are queued for it."""
        import ssl
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session_id or "", protocol=mqtt.MQTTv5)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        properties = None
        if session_id:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=not session_id, properties=properties)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"no SUBACK from the broker at {host}:{port} within {timeout}s")

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain)))

    def snapshot(self, suffix: str = "") -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def records(self, suffix: str) -> list[dict]:
        return [m.json() for m in self.snapshot(suffix)]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
