"""The rollout controller's shell in `qc_cloud serve`: a thread that runs rollout.Controller.step every
rollout_interval_s, and the MQTT client (the service's own broker account) that publishes the stored signed
manifests, retained, QoS 1, on qc/<site>/<line>/<cell>/model/update. A publish counts only once the broker
acknowledged it without a failure code (an ACL refusal is 0x87): otherwise the step's transaction rolls back
and the next step tries again."""

from __future__ import annotations

import json
import logging
import threading
import time

from qc_cloud.fleet import rollout
from qc_cloud.fleet.settings import FleetSettings
from qc_contract.mqtt_client import connect_properties, create_client
from qc_contract.topics import CellId

log = logging.getLogger("qc_fleet.rollout")
PUBLISH_TIMEOUT_S = 15.0


class PublishError(RuntimeError):
    pass


class ManifestPublisher:
    """publish(cell, manifest): retained QoS 1 on the cell's model/update, waiting for a successful PUBACK."""

    def __init__(self, settings: FleetSettings) -> None:
        self.broker = settings.broker(f"{settings.client_id}-rollout")
        self._acks: dict[int, object] = {}
        self._cond = threading.Condition()
        self._connected = threading.Event()
        client = create_client(self.broker, paho_reconnects=True)
        client.reconnect_delay_set(1, 10)
        client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        client.on_disconnect = lambda c, u, f, rc, p: self._connected.clear()
        client.on_publish = self._on_publish
        client.connect_async(
            self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s, properties=connect_properties()
        )
        client.loop_start()
        self.client = client

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def __call__(self, cell: str, manifest: dict) -> None:
        if not self._connected.wait(PUBLISH_TIMEOUT_S):
            raise PublishError(f"not connected to the broker {self.broker.host}:{self.broker.port}")
        topic = CellId(*cell.split("/")).model_update
        payload = json.dumps(manifest, sort_keys=True).encode()
        info = self.client.publish(topic, payload, qos=1, retain=True)
        end = time.monotonic() + PUBLISH_TIMEOUT_S
        with self._cond:
            while info.mid not in self._acks:
                left = end - time.monotonic()
                if left <= 0:
                    raise PublishError(f"{topic}: no PUBACK within {PUBLISH_TIMEOUT_S:g} s")
                self._cond.wait(left)
            code = self._acks.pop(info.mid)
        if getattr(code, "is_failure", False):
            raise PublishError(f"{topic}: the broker refused the update ({code})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RolloutRunner:
    def __init__(self, settings: FleetSettings, engine) -> None:
        self.interval_s = settings.rollout_interval_s
        self.publisher = ManifestPublisher(settings)
        self.controller = rollout.Controller(engine, self.publisher)
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-rollout", daemon=True)

    def start(self) -> RolloutRunner:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for rollout_id, event in self.controller.step().events:
                    log.info("rollout %d: %s", rollout_id, event)
                self.last_error = ""
            except Exception as exc:  # database or broker down: the step's transaction rolled back; retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("rollout step failed: %s", self.last_error, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.publisher.close()
