"""The MQTT session: where MQTT connects and reconnects (exponential backoff with jitter), announces the
cell (retained online birth, offline last will), subscribes to the inbound topics and hands PUBACKs to
the forwarder. Network I/O runs in this class's own thread, never on a ROS callback.

The reconnect loop is ours rather than paho's loop_start(), so every connection error (refused
credentials, TLS verification, DNS, timeout) reaches the diagnostics with its cause.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from qc_contract import records
from qc_contract.broker import BrokerConfig
from qc_contract.mqtt_client import connect_properties, create_client
from qc_contract.topics import CellId

Log = Callable[[str, str], None]  # (level: debug/info/warn/error, message)


def python_log(level: str, message: str) -> None:
    logging.getLogger("qc_cell.bridge").log(
        {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}.get(level, logging.ERROR), message
    )


def _no_op(*_args) -> None:
    return None


@dataclass(frozen=True)
class Ack:
    mid: int
    failure: bool
    reason: str  # MQTT 5 PUBACK reason, e.g. "Success", "No matching subscribers", "Not authorized"


class MqttSession:
    def __init__(
        self,
        broker: BrokerConfig,
        cell: CellId,
        *,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        inflight_window: int = 20,
        max_packet_bytes: int = 0,
        status_details: Callable[[], dict[str, Any]] | None = None,
        log: Log = python_log,
    ) -> None:
        self.broker = broker
        self.cell = cell
        self.log = log
        self.acks: queue.SimpleQueue[Ack] = queue.SimpleQueue()
        self.wake = threading.Event()  # set on connect and on every ack: the forwarder has work
        self.counts: Counter[str] = Counter()
        self.last_error = ""
        self.receive_maximum = inflight_window  # lowered to the broker's Receive Maximum on connect
        self._subscriptions = list(subscriptions)
        self._on_message_cb = on_message
        self._status_details = status_details or dict
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = create_client(broker, inflight_window)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        # "External loop" mode: publish() from other threads only queues the packet and wakes our loop,
        # which does all socket writes. Without it paho writes from the caller's thread when loop_start()
        # is not used, racing our loop and reordering (even interleaving) packets.
        self._client.on_socket_register_write = _no_op
        self._client.on_socket_unregister_write = _no_op
        # The broker publishes this when the connection dies without a DISCONNECT (crash, cable, power).
        will = records.status(cell=cell.path, state="offline", stamp_ns=0, reason="connection_lost")
        self._client.will_set(cell.status, records.encode(will), qos=1, retain=True)
        self._client.connect_async(
            broker.host,
            broker.port,
            keepalive=broker.keepalive_s,
            clean_start=True,
            properties=connect_properties(max_packet_bytes=max_packet_bytes, receive_maximum=64),
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-session", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "shutdown", timeout_s: float = 2.0) -> None:
        """Clean shutdown: retained offline status (a clean DISCONNECT suppresses the will), then disconnect."""
        self._closing.set()
        if self.connected:
            info = self._publish_status("offline", reason)
            if info is not None:
                with contextlib.suppress(RuntimeError, ValueError):  # not connected any more: the will covers it
                    info.wait_for_publish(timeout_s)
            self._client.disconnect()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s + 3)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def _run(self) -> None:
        delay = float(self.broker.reconnect_min_s)
        while not self._stop.is_set():
            try:
                self._client.reconnect()
            except Exception as exc:  # OSError, ssl.SSLError, socket.gaierror, ...: retried with backoff
                self._set_error(f"cannot connect to {self.broker.url}: {type(exc).__name__}: {exc}")
                self.counts["connect_failures"] += 1
            else:
                started = time.monotonic()
                while not self._stop.is_set():
                    rc = self._client.loop(timeout=0.1)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    # Flush the DISCONNECT queued by stop().
                    for _ in range(10):
                        if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                            break
                    break
                self._connected.clear()
                if time.monotonic() - started > 30:
                    delay = float(self.broker.reconnect_min_s)  # a connection that lasted resets the backoff
            # Jitter, so a fleet of cells does not reconnect in lockstep after a broker restart.
            self._stop.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, float(self.broker.reconnect_max_s))
        self._connected.clear()

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            self.log("warn", message)
        self.last_error = message

    # -- paho callbacks (network thread) ---------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.counts["connect_refused"] += 1
            self._set_error(f"broker {self.broker.url} refused the connection: {reason_code}")
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if receive_max:
            self.receive_maximum = min(self.receive_maximum, int(receive_max))
        self.counts["connects"] += 1
        self.last_error = ""
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._publish_status("online")
        self._connected.set()
        self.log("info", f"connected to {self.broker.url} as {self.broker.client_id}")
        self.wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self.counts["disconnects"] += 1
            if not self._closing.is_set():
                self._set_error(f"disconnected from {self.broker.url}: {reason_code}")
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Called with paho's internal lock held: only enqueue here, the forwarder does the rest.
        self.acks.put(Ack(mid, bool(reason_code.is_failure), str(reason_code)))
        self.wake.set()

    def _on_message(self, client, userdata, message) -> None:
        if self._on_message_cb is None:
            return
        try:
            self._on_message_cb(message.topic, bytes(message.payload))
        except Exception as exc:  # a handler bug must not take the network thread down
            self.counts["handler_errors"] += 1
            self.log("error", f"inbound handler failed on {message.topic}: {type(exc).__name__}: {exc}")

    # -- publishing ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Hand a message to paho; returns its mid. paho resends unacknowledged QoS 1 messages on reconnect."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def publish_status(self) -> None:
        """Refresh the retained online status with current health details."""
        if self.connected:
            self._publish_status("online")

    def _publish_status(self, state: str, reason: str = "") -> mqtt.MQTTMessageInfo | None:
        body = records.status(
            cell=self.cell.path, state=state, stamp_ns=time.time_ns(), reason=reason, details=self._status_details()
        )
        try:
            return self._client.publish(self.cell.status, records.encode(body), qos=1, retain=True)
        except (ValueError, RuntimeError) as exc:
            self.log("warn", f"status publish failed: {exc}")
            return None
