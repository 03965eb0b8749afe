"""What the cloud link is configured with: one typed settings object, built and validated from the flat named
values of the params file (`cloud_bridge` section, docs/mqtt.md) by `from_values`. No ROS: the node passes the
values its parameters yield, a service without ROS can pass the same names from its own configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qc_cell.bridge.bridge import BridgeSettings
from qc_cell.bridge.model_updater import UpdateSettings
from qc_cell.bridge.outbox import OutboxLimits
from qc_contract.artifact import FetchPolicy
from qc_contract.broker import BridgeConfigError, BrokerConfig, broker_config
from qc_contract.topics import CellId
from qc_contract.update_manifest import TrustedKeys
from qc_contract.vocabulary import SIMULATED_INPUTS

MB = 1024 * 1024
IMAGE_VERDICTS = ("REINSPECT", "DEFECTIVE")  # the verdicts whose images may leave the cell
VERIFY_REQUEST_QUOTA_BYTES = 16 * MB  # outbox quota of the verify_request stream (images with a deadline)

# Settings that may change while the link runs (CloudLink.retune); every other one is fixed at start-up.
RUNTIME_SETTINGS = (
    "process_period_s",
    "sample_bytes_per_hour",
    "sample_min_interval_s",
    "offload_slack_ms",
    "offload_min_remaining_ms",
)


@dataclass(frozen=True)
class SampleSettings:
    """JPEG samples of chosen verdicts for retraining, within a byte budget per sliding hour."""

    enabled: bool = False
    verdicts: tuple[str, ...] = IMAGE_VERDICTS
    bytes_per_hour: int = 20_000_000
    min_interval_s: float = 10.0
    jpeg_quality: int = 95  # samples are training data: few compression artefacts (docs/learning-loop.md)
    max_side: int = 0  # downscale to this longer side (0 = keep)
    random_rate: float = 0.01  # share of ALL parts (any verdict) sampled at random, marked random_sample

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_rate <= 1.0:
            raise BridgeConfigError(f"sample_random_rate {self.random_rate}: a share between 0 and 1")
        unknown = set(self.verdicts) - set(IMAGE_VERDICTS)
        if unknown:
            raise BridgeConfigError(f"sample_verdicts {sorted(unknown)}: only {IMAGE_VERDICTS} can be sampled")


@dataclass(frozen=True)
class OffloadSettings:
    """Re-inspection offload: a REINSPECT part's image goes to the cloud, whose verdict counts until the deadline."""

    enabled: bool = False
    slack_ms: float = 800.0  # capture -> latest useful cloud verdict (the conveyor slack)
    min_remaining_ms: float = 100.0  # skip the offload when less slack remains
    late_grace_s: float = 30.0  # late answers are still measured this long
    jpeg_quality: int = 90  # best quality of the policy's ladder (then -15, -30)
    max_side: int = 0  # the cloud model's input side: the image is scaled down to it (0 = keep)
    max_response_bytes: int = 4096
    roi: tuple[int, int, int, int] | None = None  # the part's region in the frame (x, y, w, h); None = whole
    margin_ms: float = 20.0
    prior_rtt_ms: float = 100.0
    prior_bandwidth_mbps: float = 5.0
    min_bandwidth_mbps: float = 0.2
    max_backlog: int = 8
    overload_threshold: float = 0.05
    second_opinion_share: float = 0.0  # top share of the NORMAL parts by P(defect) also offloaded

    def policy(self):
        from qc_cell.bridge.offload import PolicySettings

        ladder = tuple(dict.fromkeys(max(10, self.jpeg_quality - step) for step in (0, 15, 30)))
        return PolicySettings(
            roi=self.roi,
            cloud_side=self.max_side,
            quality_ladder=ladder,
            margin_ms=self.margin_ms,
            prior_rtt_ms=self.prior_rtt_ms,
            prior_bandwidth_mbps=self.prior_bandwidth_mbps,
            min_bandwidth_mbps=self.min_bandwidth_mbps,
            max_backlog=self.max_backlog,
            overload_threshold=self.overload_threshold,
            second_opinion_share=self.second_opinion_share,
        )


@dataclass(frozen=True)
class CloudLinkSettings:
    cell: CellId
    broker: BrokerConfig
    outbox_path: str
    outbox_limits: OutboxLimits = field(default_factory=OutboxLimits)
    outbox_synchronous: str = "FULL"
    inflight_window: int = 20
    max_inbound_packet_bytes: int = 0  # 0 = no limit
    process_period_s: float = 10.0  # process state forwarded on a flag change or this often
    loss_alert_period_s: float = 10.0  # at most one OUTBOX_FULL alert per period
    frame_buffer: int = 16  # recent frames kept for samples and offload
    updates: UpdateSettings | None = None  # None: updates disabled, every manifest is answered with a rejection
    sample: SampleSettings = field(default_factory=SampleSettings)
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    # What of the cell is simulated (qc_contract.vocabulary.SIMULATED_INPUTS): named in part, reject and process
    # records, so the cloud never takes a demo's parts for a real line's.
    simulated_inputs: tuple[str, ...] = ()

    @property
    def wants_frames(self) -> bool:
        """Only samples and offload need the images: without them the link must not cost the cell a copy each."""
        return self.sample.enabled or self.offload.enabled

    def bridge_settings(self) -> BridgeSettings:
        """The transport's settings; it subscribes to the inbound topics the enabled features answer."""
        # model/update always: with updates disabled a manifest is answered with a clear rejection.
        subscriptions = [self.cell.model_update]
        if self.updates is not None:
            subscriptions.append(self.cell.model_chunks)
        if self.offload.enabled:
            subscriptions.append(self.cell.verify_response)
        return BridgeSettings(
            cell=self.cell,
            broker=self.broker,
            outbox_path=self.outbox_path,
            limits=self.outbox_limits,
            synchronous=self.outbox_synchronous,
            inflight_window=self.inflight_window,
            max_packet_bytes=self.max_inbound_packet_bytes,
            subscriptions=tuple(subscriptions),
        )


def simulated_inputs(value: str) -> tuple[str, ...]:
    """The simulated_inputs parameter (comma-separated) checked against the contract's vocabulary."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(SIMULATED_INPUTS))
    if unknown:
        raise BridgeConfigError(f"simulated_inputs {unknown}: known are {list(SIMULATED_INPUTS)}")
    return names


def from_values(v: Mapping[str, Any]) -> CloudLinkSettings:
    """Settings from the named values of the params file. Raises BridgeConfigError, KeyFileError or ValueError
    with a message that names the setting; reads the trusted public keys when updates are enabled."""
    cell = CellId(v["site"], v["line"], v["cell"])
    broker = broker_config(
        v["broker_url"],
        # The broker ties client ids to user names (docker/mosquitto: use_username_as_clientid).
        v["client_id"] or v["username"] or f"qc-{cell.site}-{cell.line}-{cell.cell}",
        ca_file=v["tls_ca_file"],
        cert_file=v["tls_cert_file"],
        key_file=v["tls_key_file"],
        username=v["username"],
        password_file=v["password_file"],
        password_env=v["password_env"],
        keepalive_s=v["keepalive_s"],
        reconnect_min_s=v["reconnect_min_s"],
        reconnect_max_s=v["reconnect_max_s"],
        allow_plain_remote=v["allow_plain_mqtt"],
    )
    key_files = [k.strip() for k in v["update_public_keys"].split(",") if k.strip()]
    if v["updates_enabled"] and not key_files:
        raise BridgeConfigError("updates_enabled needs at least one file in update_public_keys")
    if v["updates_enabled"] and not v["model_store_dir"]:
        raise BridgeConfigError("updates_enabled needs model_store_dir (inference's model store, where updates go)")
    updates = None
    if v["updates_enabled"]:
        updates = UpdateSettings(
            update_dir=Path(v["update_dir"]).expanduser(),
            keys=TrustedKeys(key_files, v["update_revoked_keys_file"]),
            cell_path=cell.path,
            model_store_dir=Path(v["model_store_dir"]).expanduser(),
            require_expiry=v["update_require_expiry"],
            max_manifest_bytes=v["max_manifest_bytes"],
            max_artifact_bytes=v["max_artifact_mb"] * MB,
            fetch=FetchPolicy(
                schemes=frozenset(v["update_url_schemes"]),
                read_timeout_s=v["fetch_timeout_s"],
                deadline_s=v["fetch_deadline_s"],
                ca_file=v["https_ca_file"],
                proxy=v["update_proxy"],
            ),
            chunk_timeout_s=v["chunk_timeout_s"],
            keep_versions=v["update_keep_versions"],
        )
    sample = SampleSettings(
        enabled=v["sample_enabled"],
        verdicts=tuple(v["sample_verdicts"]),
        bytes_per_hour=v["sample_bytes_per_hour"],
        min_interval_s=v["sample_min_interval_s"],
        jpeg_quality=v["sample_jpeg_quality"],
        max_side=v["sample_max_side"],
        random_rate=v["sample_random_rate"],
    )
    limits = OutboxLimits(
        max_records=v["outbox_max_records"],
        max_bytes=v["outbox_max_mb"] * MB,
        policy=v["outbox_full_policy"],
        stream_max_bytes={"sample": v["sample_outbox_max_mb"] * MB, "verify_request": VERIFY_REQUEST_QUOTA_BYTES},
    )
    return CloudLinkSettings(
        cell=cell,
        broker=broker,
        outbox_path=str(Path(v["outbox_path"]).expanduser()),
        outbox_limits=limits,
        outbox_synchronous=v["outbox_synchronous"],
        inflight_window=v["inflight_window"],
        max_inbound_packet_bytes=v["max_inbound_packet_bytes"],
        process_period_s=v["process_period_s"],
        loss_alert_period_s=v["loss_alert_period_s"],
        frame_buffer=v["frame_buffer"],
        simulated_inputs=simulated_inputs(v["simulated_inputs"]),
        updates=updates,
        sample=sample,
        offload=OffloadSettings(
            enabled=v["offload_enabled"],
            slack_ms=v["offload_slack_ms"],
            min_remaining_ms=v["offload_min_remaining_ms"],
            late_grace_s=v["offload_late_grace_s"],
            jpeg_quality=v["offload_jpeg_quality"],
            max_side=v["offload_max_side"],
            max_response_bytes=v["max_verify_response_bytes"],
            roi=_roi(v["offload_roi"]),
            margin_ms=v["offload_margin_ms"],
            prior_rtt_ms=v["offload_prior_rtt_ms"],
            prior_bandwidth_mbps=v["offload_prior_bandwidth_mbps"],
            min_bandwidth_mbps=v["offload_min_bandwidth_mbps"],
            max_backlog=v["offload_max_backlog"],
            overload_threshold=v["offload_overload_threshold"],
            second_opinion_share=v["offload_second_opinion_share"],
        ),
    )


def _roi(values) -> tuple[int, int, int, int] | None:
    """offload_roi: [0] or [] = the whole frame, else [x, y, width, height]."""
    values = tuple(int(v) for v in values)
    if values in ((), (0,)):
        return None
    if len(values) != 4 or min(values) < 0 or values[2] < 1 or values[3] < 1:
        raise BridgeConfigError(f"offload_roi {list(values)}: [] or [x, y, width, height] with width, height >= 1")
    return values  # type: ignore[return-value]
