"""Connecting the cloud tools to a cell's broker: the shared command-line options (broker, TLS, credentials,
cell address) and a connected paho client. Connection settings are parsed by the same code as the edge's
(qc_contract.broker), so both sides accept the same URLs and never print a password."""

from __future__ import annotations

import argparse
import sys
import threading

import paho.mqtt.client as mqtt

from qc_contract.broker import BridgeConfigError, BrokerConfig, broker_config
from qc_contract.mqtt_client import connect_properties, create_client


class LinkError(RuntimeError):
    """Cannot reach or use the broker; the message says why."""


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host[:port] or mqtts://host[:port]")
    group.add_argument("--ca-file", default="", help="mqtts: CA certificate of the broker ('' = system store)")
    group.add_argument("--cert-file", default="", help="mqtts: client certificate (mutual TLS)")
    group.add_argument("--key-file", default="", help="mqtts: client private key")
    group.add_argument("--username", default="", help="broker user name")
    group.add_argument("--password-file", default="", help="file whose first line is the password")
    group.add_argument("--password-env", default="", help="environment variable holding the password")
    group.add_argument("--client-id", default="", help="MQTT client id (default: per command)")
    group.add_argument(
        "--allow-plain-mqtt", action="store_true", help="allow mqtt:// (no TLS) to a remote broker (warned about)"
    )


def add_cell_arguments(parser: argparse.ArgumentParser, wildcards: bool = False) -> None:
    group = parser.add_argument_group("cell (topics qc/<site>/<line>/<cell>/...)")
    default = "+" if wildcards else None
    extra = " ('+' = all)" if wildcards else ""
    for name in ("site", "line", "cell"):
        group.add_argument(f"--{name}", default=default, required=not wildcards, help=f"{name} name{extra}")


def broker_from_args(args: argparse.Namespace, default_client_id: str) -> BrokerConfig:
    try:
        broker = broker_config(
            args.broker,
            args.client_id or default_client_id,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            username=args.username,
            password_file=args.password_file,
            password_env=args.password_env,
            allow_plain_remote=args.allow_plain_mqtt,
        )
    except BridgeConfigError as exc:
        raise LinkError(str(exc)) from exc
    if broker.plaintext_warning:
        print(f"warning: {broker.plaintext_warning}", file=sys.stderr)
    return broker


def connect(
    broker: BrokerConfig,
    *,
    subscriptions: tuple[str, ...] = (),
    on_message=None,
    persistent_session_s: int = 0,
    timeout_s: float = 10.0,
) -> mqtt.Client:
    """A connected client running paho's network thread. persistent_session_s > 0 keeps the session (and
    the messages queued for it) on the broker that long while this tool is not connected."""
    client = create_client(broker, inflight_window=100, paho_reconnects=True)
    client.reconnect_delay_set(1, 5)
    ready = threading.Event()  # connected, and every subscription acknowledged
    failure: list[str] = []

    def on_connect(client_, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            failure.append(str(reason_code))
            ready.set()
        elif subscriptions:
            client_.subscribe([(topic, 1) for topic in subscriptions])
        else:
            ready.set()

    def on_subscribe(client_, userdata, mid, reason_codes, properties) -> None:
        failure.extend(f"subscription refused: {rc}" for rc in reason_codes if rc.is_failure)
        ready.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(
            broker.host,
            broker.port,
            keepalive=broker.keepalive_s,
            clean_start=persistent_session_s == 0,
            properties=connect_properties(session_expiry_s=persistent_session_s),
        )
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot connect to {broker.url}: {exc}") from exc
    client.loop_start()
    if not ready.wait(timeout_s) or failure:
        client.loop_stop()
        raise LinkError(f"broker {broker.url} refused or did not answer: {failure[0] if failure else 'timeout'}")
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
