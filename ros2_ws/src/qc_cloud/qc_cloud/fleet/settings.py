"""Fleet service settings: defaults < YAML file < environment (QC_FLEET_<NAME>) < explicit overrides (the
command line's non-secret flags). Validated at start-up; a bad value raises SettingsError with one line.
Secrets (the database URL with its password, the broker password) come from files or the environment only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "QC_FLEET_"
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SettingsError(ValueError):
    """One line saying which setting is wrong and why (never a secret)."""


@dataclass
class FleetSettings:
    data_dir: str = "fleet-data"  # SQLite file, sample images, generated tokens
    database_url: str = ""  # "" = sqlite:///<data_dir>/fleet.sqlite3; postgresql+psycopg://... for a fleet
    database_url_file: str = ""  # file whose first line is the URL (it holds the password)
    broker_url: str = "mqtt://127.0.0.1:1883"
    broker_username: str = ""
    broker_password_file: str = ""
    broker_password_env: str = ""
    broker_ca_file: str = ""
    allow_plain_mqtt: bool = False
    topic_filter: str = "qc/+/+/+/#"
    # MQTT 5 shared subscription group of the ingest workers. "auto": a plain subscription with one worker in the
    # process, "qc-fleet" with several. Several processes must name the same group. A plain subscription is the
    # safer choice for one worker: mosquitto 2.0 does not keep a shared subscription of a persisted session over
    # a broker restart (what is published before the worker reconnects is not queued for the group).
    share_group: str = "auto"
    client_id: str = "qc-fleet-ingest"  # worker i uses <client_id>-<i>; persistent sessions survive restarts
    session_expiry_s: int = 7 * 86400
    ingest_workers: int = 1
    batch_size: int = 500
    batch_ms: int = 50
    receive_maximum: int = 1000  # unacknowledged messages the broker may send one worker
    api: bool = True
    ingest: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_workers: int = 1
    retention_days: int = 365
    partition_days_ahead: int = 7
    quarantine_max_bytes: int = 64 * 1024  # raw bytes kept per quarantined message
    # Staged rollouts (qc_cloud rollout): the controller judges and moves them this often (s); 0 = off. It runs
    # in the process that ingests (it publishes the stored signed manifests with the service's broker account).
    rollout_interval_s: float = 10.0
    # Drift alerts (drift.py, docs/learning-loop.md "Drift alerts"): the line reference's parts, the recent window,
    # the fewest parts judged, and the PSI thresholds (an episode opens at alert, clears below watch).
    drift_reference_parts: int = 300
    drift_window_parts: int = 300
    drift_min_parts: int = 150
    drift_watch_psi: float = 0.1
    drift_alert_psi: float = 0.25
    bootstrap_tokens: bool = True  # first start with no token: create a read and a write token in data_dir
    extra: dict[str, Any] = field(default_factory=dict)

    def drift_settings(self):
        from qc_cloud.fleet.drift import DriftSettings

        return DriftSettings(
            reference_parts=self.drift_reference_parts,
            window_parts=self.drift_window_parts,
            min_parts=self.drift_min_parts,
            watch_psi=self.drift_watch_psi,
            alert_psi=self.drift_alert_psi,
        )

    def broker(self, client_id: str):
        """The broker connection settings (qc_contract.broker) for one of the service's MQTT clients; ValueError
        with the reason when they are unusable."""
        from qc_contract.broker import BridgeConfigError, broker_config

        try:
            return broker_config(
                self.broker_url,
                client_id,
                ca_file=self.broker_ca_file,
                username=self.broker_username,
                password_file=self.broker_password_file,
                password_env=self.broker_password_env,
                allow_plain_remote=self.allow_plain_mqtt,
            )
        except BridgeConfigError as exc:
            raise ValueError(f"broker: {exc}") from None

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "fleet.sqlite3"

    @property
    def samples_dir(self) -> Path:
        return Path(self.data_dir) / "samples"

    def resolved_database_url(self) -> str:
        if self.database_url_file:
            try:
                return Path(self.database_url_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise SettingsError(f"database_url_file {self.database_url_file}: cannot read a URL ({exc})") from None
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    def validate(self) -> FleetSettings:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        need(1 <= self.ingest_workers <= 64, f"ingest_workers {self.ingest_workers}: within [1, 64]")
        need(1 <= self.api_workers <= 64, f"api_workers {self.api_workers}: within [1, 64]")
        need(1 <= self.batch_size <= 10000, f"batch_size {self.batch_size}: within [1, 10000]")
        need(1 <= self.batch_ms <= 10000, f"batch_ms {self.batch_ms}: within [1, 10000] ms")
        need(1 <= self.receive_maximum <= 65535, f"receive_maximum {self.receive_maximum}: within [1, 65535]")
        need(0 <= self.api_port <= 65535, f"api_port {self.api_port}: a TCP port")
        need(0 <= self.rollout_interval_s <= 3600, f"rollout_interval_s {self.rollout_interval_s}: within [0, 3600]")
        need(1 <= self.retention_days <= 36500, f"retention_days {self.retention_days}: within [1, 36500]")
        if self.share_group == "auto":
            self.share_group = "" if self.ingest_workers == 1 else "qc-fleet"
        need(self.share_group == "" or bool(_GROUP.match(self.share_group)), "share_group: letters, digits, _.-")
        need(self.share_group != "" or self.ingest_workers == 1, "several ingest_workers need a share_group")
        need(self.topic_filter.startswith("qc/"), f"topic_filter {self.topic_filter!r}: must start with qc/")
        need(self.api or self.ingest, "api and ingest are both off: nothing to run")
        try:
            self.drift_settings()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        url = self.resolved_database_url()
        need(url.startswith(("sqlite", "postgresql")), "database_url: sqlite:/// or postgresql+psycopg:// only")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(FleetSettings) if f.name != "extra"}


def _convert(name: str, value: Any) -> Any:
    kind = type(getattr(FleetSettings(), name))
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        return kind(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} {value!r}: expected {kind.__name__}") from None


def load(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> FleetSettings:
    values: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"settings file {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"settings file {path}: a mapping of setting: value")
        values.update(data)
    env = os.environ if env is None else env
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}")
    return FleetSettings(**{k: _convert(k, v) for k, v in values.items()}).validate()
