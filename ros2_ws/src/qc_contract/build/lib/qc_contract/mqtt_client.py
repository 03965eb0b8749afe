"""One way to build a paho-mqtt 2.x client (MQTT 5, TLS, credentials) for the edge bridge and the cloud CLI."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from qc_contract.broker import BrokerConfig


def create_client(broker: BrokerConfig, inflight_window: int = 20, paho_reconnects: bool = False) -> mqtt.Client:
    """paho_reconnects=False: the caller owns reconnects (the edge's session.py, which reports every error);
    True: paho's loop_start() thread reconnects by itself (the cloud tools)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=broker.client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=paho_reconnects,
    )
    client.max_inflight_messages_set(inflight_window)
    if broker.tls:
        client.tls_set(
            ca_certs=broker.ca_file or None,  # None: the system trust store
            certfile=broker.cert_file or None,
            keyfile=broker.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,  # hostname checked against the certificate
        )
    if broker.username:
        client.username_pw_set(broker.username, broker.password.reveal() if broker.password else None)
    return client


def connect_properties(session_expiry_s: int = 0, max_packet_bytes: int = 0, receive_maximum: int = 0) -> Properties:
    """CONNECT properties: session expiry (0 = the session ends with the connection), the largest packet we
    accept (the broker drops bigger ones for us) and how many inbound QoS 1 messages may be in flight."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    if max_packet_bytes:
        props.MaximumPacketSize = max_packet_bytes
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props
