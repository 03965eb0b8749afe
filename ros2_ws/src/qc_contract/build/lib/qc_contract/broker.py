"""Broker connection settings: URL, TLS, credentials (never logged), client id, keepalive, reconnect backoff.

Plain mqtt:// (no TLS) is for a broker on this machine. To another host it sends the password and every
record in clear, so it needs an explicit allow_plain_remote and is then reported by plaintext_warning().
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BridgeConfigError(ValueError):
    """A bridge setting is invalid; the message says which and why (never contains a secret)."""


class Secret:
    """A password that does not leak into logs, reprs or tracebacks by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool
    client_id: str
    ca_file: str = ""  # mqtts: CA bundle that signed the broker's certificate ("" = system trust store)
    cert_file: str = ""  # optional client certificate (mutual TLS) ...
    key_file: str = ""  # ... and its private key
    username: str = ""
    password: Secret | None = field(default=None, repr=False)
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30

    @property
    def plaintext_warning(self) -> str:
        """A warning to log at start-up when this connection is plain MQTT to another host, else ''."""
        if self.tls or is_loopback(self.host):
            return ""
        return f"broker {self.url}: plain MQTT to a remote host, credentials and records travel unencrypted"

    @property
    def url(self) -> str:
        """The broker URL without credentials, safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host[:port] or mqtts://host[:port] -> (host, port, tls). Credentials in the URL are refused,
    because URLs end up in logs and parameter dumps."""
    parts = urlsplit(url.strip())
    if parts.scheme not in DEFAULT_PORTS:
        raise BridgeConfigError(f"broker_url {url!r}: scheme must be mqtt:// or mqtts://")
    if parts.username or parts.password:
        raise BridgeConfigError("broker_url must not contain credentials: use username + password_file/password_env")
    if not parts.hostname:
        raise BridgeConfigError(f"broker_url {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BridgeConfigError(f"broker_url {url!r}: only scheme, host and port are allowed")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise BridgeConfigError(f"broker_url {url!r}: bad port") from exc
    return parts.hostname, port, parts.scheme == "mqtts"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_password(password_file: str = "", password_env: str = "") -> Secret | None:
    """The broker password from a file (first line, e.g. a mounted secret) or an environment variable."""
    if password_file and password_env:
        raise BridgeConfigError("set password_file or password_env, not both")
    if password_file:
        path = Path(password_file).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise BridgeConfigError(f"password_file {path}: {exc.strerror or exc}") from None
        value = text.splitlines()[0] if text.strip() else ""
        if not value:
            raise BridgeConfigError(f"password_file {path} is empty")
        return Secret(value)
    if password_env:
        value = os.environ.get(password_env, "")
        if not value:
            raise BridgeConfigError(f"password_env: environment variable {password_env} is not set or empty")
        return Secret(value)
    return None


def broker_config(
    url: str,
    client_id: str,
    *,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    username: str = "",
    password_file: str = "",
    password_env: str = "",
    keepalive_s: int = 30,
    reconnect_min_s: int = 1,
    reconnect_max_s: int = 30,
    allow_plain_remote: bool = False,
) -> BrokerConfig:
    host, port, tls = parse_broker_url(url)
    if not client_id:
        raise BridgeConfigError("client_id must not be empty")
    for name, path in (("tls_ca_file", ca_file), ("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        if path and not Path(path).expanduser().is_file():
            raise BridgeConfigError(f"{name} {path} does not exist")
        if path and not tls:
            raise BridgeConfigError(f"{name} is set but broker_url is not mqtts://")
    if bool(cert_file) != bool(key_file):
        raise BridgeConfigError("tls_cert_file and tls_key_file go together (mutual TLS)")
    if not tls and not is_loopback(host) and not allow_plain_remote:
        raise BridgeConfigError(
            f"broker_url {url!r}: plain mqtt:// to a remote host sends credentials and records unencrypted; "
            "use mqtts:// or set allow_plain_mqtt (it is then logged as a warning)"
        )
    password = load_password(password_file, password_env)
    if password is not None and not username:
        raise BridgeConfigError("a password is configured but no username")
    if not 5 <= keepalive_s <= 3600:
        raise BridgeConfigError(f"keepalive_s {keepalive_s} must be within [5, 3600]")
    if not 1 <= reconnect_min_s <= reconnect_max_s:
        raise BridgeConfigError("reconnect delays must satisfy 1 <= min <= max")
    return BrokerConfig(
        host=host,
        port=port,
        tls=tls,
        client_id=client_id,
        ca_file=str(Path(ca_file).expanduser()) if ca_file else "",
        cert_file=str(Path(cert_file).expanduser()) if cert_file else "",
        key_file=str(Path(key_file).expanduser()) if key_file else "",
        username=username,
        password=password,
        keepalive_s=keepalive_s,
        reconnect_min_s=reconnect_min_s,
        reconnect_max_s=reconnect_max_s,
    )
