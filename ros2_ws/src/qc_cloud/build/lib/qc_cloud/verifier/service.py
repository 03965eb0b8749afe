"""The verifier's MQTT shell: one worker = one MQTT 5 client in the shared subscription
$share/<group>/qc/+/+/+/verify/request (the broker gives each request to one worker of the group), a scoring
thread running the core (core.Verifier), and a retained status with the load figures.

- Answers: .../verify/response (QoS 1) to the requesting cell, and the verification record on
  .../verify/verification (QoS 1) for the fleet service.
- Status: qc-verifier/<worker>/status, retained: online with queue depth, batch sizes, service and queue times
  every status_period_s; offline by the will (killed) or on a clean stop.
- A stop (SIGTERM) unsubscribes first, answers what is queued, then disconnects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from qc_cloud.verifier.core import Answer, Scorer, Verifier, VerifierSettings
from qc_contract import records
from qc_contract.broker import BrokerConfig
from qc_contract.mqtt_client import connect_properties, create_client
from qc_contract.topics import CellId, verifier_status_topic, verify_request_subscription

log = logging.getLogger("qc_cloud.verifier")


@dataclass(frozen=True)
class ServiceSettings:
    broker: BrokerConfig
    group: str = "qc-verifier"
    status_period_s: float = 5.0


class VerifierService:
    def __init__(self, service: ServiceSettings, settings: VerifierSettings, scorer: Scorer) -> None:
        self.service = service
        self.settings = settings
        self.core = Verifier(settings, scorer, self._emit)
        self.subscription = verify_request_subscription(service.group)
        self.status_topic = verifier_status_topic(settings.worker)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.client = create_client(service.broker, inflight_window=100, paho_reconnects=True)
        self.client.reconnect_delay_set(1, 5)
        offline = records.encode(self._status("offline", "connection lost"))
        self.client.will_set(self.status_topic, offline, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- MQTT callbacks (paho thread) -------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.service.broker.url, reason_code)
            return
        self.connected.set()
        client.subscribe(self.subscription, qos=1)
        self._publish_status()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("subscription %s refused: %s", self.subscription, refused)
        else:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stop.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self.service.broker.url, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self.core.admit(message.topic, bytes(message.payload))

    # -- answers (scoring thread) -----------------------------------------------------------------------

    def _emit(self, answer: Answer) -> None:
        if answer.cell is None:
            return
        cell = CellId(*answer.cell.split("/"))
        self.client.publish(cell.verify_response, records.encode(answer.response), qos=1)
        if answer.verification is not None:
            self.client.publish(cell.verify_verification, records.encode(answer.verification), qos=1)

    def _status(self, state: str, reason: str = "") -> dict:
        return {
            "schema_version": records.SCHEMA_VERSION,
            "type": "verifier_status",
            "worker": self.settings.worker,
            "group": self.service.group,
            "state": state,
            "reason": reason,
            "time": records.iso_time(time.time_ns()),
            "load": self.core.report() if state == "online" else None,
        }

    def _publish_status(self) -> None:
        self.client.publish(self.status_topic, records.encode(self._status("online")), qos=1, retain=True)

    def _report_loop(self) -> None:
        while not self._stop.wait(self.service.status_period_s):
            report = self.core.report()
            log.info("load %s", json.dumps(report, separators=(",", ":")))
            if self.connected.is_set():
                self._publish_status()

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        broker = self.service.broker
        self.client.connect(
            broker.host, broker.port, keepalive=broker.keepalive_s, clean_start=True, properties=connect_properties()
        )
        self.client.loop_start()
        for target, name in ((self.core.serve, "verifier-score"), (self._report_loop, "verifier-report")):
            thread = threading.Thread(target=target, args=(self._stop,) if name == "verifier-score" else (), name=name)
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        if not self.subscribed.wait(timeout_s):
            raise RuntimeError(f"broker {broker.url}: not connected and subscribed within {timeout_s:.0f} s")

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop taking requests, answer the queued ones (up to drain_s), publish offline, disconnect."""
        if self.connected.is_set():
            self.client.unsubscribe(self.subscription)
        end = time.monotonic() + drain_s
        while self.core.batcher.depth and time.monotonic() < end:
            time.sleep(0.02)
        self._stop.set()
        self.core.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.connected.is_set():
            info = self.client.publish(
                self.status_topic, records.encode(self._status("offline", "stopped")), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
