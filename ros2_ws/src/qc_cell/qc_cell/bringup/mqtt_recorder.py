"""Record every MQTT message a cell sends under its topic prefix (what reached the 'cloud')."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt


@dataclass
class MqttMessage:
    topic: str
    payload: bytes
    received: float

    def json(self) -> dict | None:
        try:
            data = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None


class MqttRecorder:
    def __init__(self, broker_url: str, topic: str = "qc/#", client_id: str = "qc-recorder") -> None:
        url = urlparse(broker_url)
        self.messages: list[MqttMessage] = []
        self._lock = threading.Lock()
        self._topic = topic
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(url.hostname or "127.0.0.1", url.port or 1883)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(MqttMessage(message.topic, bytes(message.payload), time.monotonic()))

    def snapshot(self) -> list[MqttMessage]:
        with self._lock:
            return list(self.messages)

    def part_ids(self, suffix: str = "/part") -> set[str]:
        ids = set()
        for message in self.snapshot():
            if message.topic.endswith(suffix) and (data := message.json()) and "part_id" in data:
                ids.add(str(data["part_id"]))
        return ids

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
