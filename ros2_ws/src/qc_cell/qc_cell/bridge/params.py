"""The cloud bridge node's parameters (spec: qc_cell.params_spec)."""

from __future__ import annotations

from qc_cell.bridge.outbox import FULL_POLICIES, SYNCHRONOUS
from qc_cell.bridge.settings import IMAGE_VERDICTS, MB
from qc_cell.params_spec import NodeParams, Param

CLOUD_BRIDGE = NodeParams(
    "cloud_bridge",
    "the cell's link to the cloud over MQTT: durable outbox, samples, offload, signed model updates",
    (
        Param("broker_url", "mqtt://127.0.0.1:1883", "mqtt://host[:port] or mqtts://host[:port] (TLS)"),
        Param("tls_ca_file", "", "mqtts: CA certificate file ('' = system trust store)"),
        Param("tls_cert_file", "", "mqtts: client certificate for mutual TLS ('' = none)"),
        Param("tls_key_file", "", "mqtts: private key of tls_cert_file"),
        Param("username", "", "broker user name ('' = anonymous)"),
        Param("password_file", "", "file whose first line is the broker password (never logged)"),
        Param("password_env", "", "environment variable holding the broker password (never logged)"),
        Param("client_id", "", "MQTT client id ('' = the username, else qc-<site>-<line>-<cell>)"),
        Param("allow_plain_mqtt", False, "allow mqtt:// (no TLS) to a non-loopback broker; logged as a warning"),
        Param("keepalive_s", 30, "MQTT keepalive (s)", range=(5, 3600)),
        Param("reconnect_min_s", 1, "first reconnect delay (s); doubles per failure", range=(1, 600)),
        Param("reconnect_max_s", 30, "longest reconnect delay (s)", range=(1, 3600)),
        Param("site", "site", "site name: topics are qc/<site>/<line>/<cell>/..."),
        Param("line", "line", "production line name"),
        Param("cell", "cell", "cell name"),
        Param("outbox_path", "~/.local/share/qc_cell/cloud_bridge/outbox.sqlite3", "durable outbox (SQLite, WAL)"),
        Param("outbox_max_records", 1_000_000, "outbox bound: records", range=(100, 100_000_000)),
        Param("outbox_max_mb", 512, "outbox bound: payload MiB", range=(1, 1_000_000)),
        Param("outbox_full_policy", "drop_oldest", "when the outbox is full", choices=FULL_POLICIES),
        Param("outbox_synchronous", "FULL", "SQLite sync: FULL survives power loss", choices=SYNCHRONOUS),
        Param("inflight_window", 20, "QoS 1 records awaiting PUBACK at once", range=(1, 1000)),
        Param("max_inbound_packet_bytes", MB + 64 * 1024, "largest inbound MQTT packet", range=(4096, 64 * MB)),
        Param(
            "process_period_s",
            10.0,
            "process/state forwarded on a flag change or this often",
            range=(0.0, 3600.0),
            runtime=True,
        ),
        Param("status_period_s", 30.0, "retained online status refresh (s)", range=(1.0, 3600.0)),
        Param(
            "frame_pool",
            True,
            "read the frames it sends (samples, offload) from the camera driver's shared-memory pool when on its "
            "host (the driver sends handles only while every frame subscriber reads the pool)",
        ),
        Param("diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0)),
        Param("loss_alert_period_s", 10.0, "at most one OUTBOX_FULL alert per period (s)", range=(1.0, 3600.0)),
        Param("updates_enabled", False, "accept signed model updates on .../model/update"),
        Param("update_public_keys", "", "comma-separated Ed25519 public key PEM files trusted (re-read on change)"),
        Param("update_revoked_keys_file", "", "revoked key ids, one per line (re-read on change; '' = none)"),
        Param("update_require_expiry", True, "refuse update manifests without expires_at"),
        Param(
            "model_store_dir",
            "",
            "the cell's model store: verified updates installed there for inference/load_model (active version, "
            "floor without update state, rollback grants); params files derive it from inference.model_store_dir",
        ),
        Param(
            "update_dir", "~/.local/share/qc_cell/cloud_bridge/updates", "where verified update packages are extracted"
        ),
        Param("update_keep_versions", 3, "extracted packages kept", range=(1, 100)),
        Param("max_manifest_bytes", 16 * 1024, "largest update manifest", range=(1024, MB)),
        Param("max_artifact_mb", 512, "largest update artifact (MiB)", range=(1, 100_000)),
        Param("update_url_schemes", ["https"], "artifact URL schemes fetched", choices=("https", "http", "file")),
        Param("update_proxy", "", "http(s) proxy for artifact downloads ('' = direct; environment ignored)"),
        Param("fetch_timeout_s", 60.0, "artifact connect and per-read timeout (s)", range=(1.0, 3600.0)),
        Param("fetch_deadline_s", 600.0, "whole artifact download deadline (s)", range=(1.0, 86400.0)),
        Param("chunk_timeout_s", 120.0, "time for all MQTT chunks of an artifact (s)", range=(1.0, 86400.0)),
        Param("load_timeout_s", 120.0, "inference/load_model answer timeout (s)", range=(1.0, 3600.0)),
        Param("https_ca_file", "", "CA file for https artifact URLs ('' = system trust store)"),
        Param("sample_enabled", False, "send JPEG samples of re-inspect/defective parts"),
        Param("sample_verdicts", IMAGE_VERDICTS, "verdicts whose images are sampled"),
        Param(
            "sample_bytes_per_hour", 20_000_000, "sample byte budget per sliding hour", range=(0, 10**12), runtime=True
        ),
        Param(
            "sample_min_interval_s", 10.0, "minimum time between two samples (s)", range=(0.0, 86400.0), runtime=True
        ),
        Param("sample_jpeg_quality", 95, "sample JPEG quality (samples are training data)", range=(10, 100)),
        Param("sample_max_side", 0, "downscale samples to this longer side (0 = keep)", range=(0, 8192)),
        Param(
            "sample_random_rate",
            0.01,
            "share of all parts (any verdict, NORMAL too) also sampled at random, for the escape estimate",
            range=(0.0, 1.0),
        ),
        Param("sample_outbox_max_mb", 50, "outbox quota for samples (MiB)", range=(1, 100_000)),
        Param("offload_enabled", False, "send re-inspect parts to the cloud for a second opinion"),
        Param(
            "offload_slack_ms",
            800.0,
            "capture -> latest useful cloud verdict (conveyor slack)",
            range=(1.0, 1e6),
            runtime=True,
        ),
        Param(
            "offload_min_remaining_ms", 100.0, "skip offload when less slack remains", range=(0.0, 1e6), runtime=True
        ),
        Param("offload_late_grace_s", 30.0, "late answers are still measured this long (s)", range=(0.0, 3600.0)),
        Param("offload_jpeg_quality", 90, "best offload JPEG quality (the policy may use -15, -30)", range=(10, 100)),
        Param(
            "offload_max_side",
            0,
            "scale offloaded images to this longer side: the cloud model's input (0 = keep)",
            range=(0, 8192),
        ),
        Param(
            "offload_roi",
            [0],
            "part region [x, y, width, height] sent to the cloud ([0] or [] = whole frame)",
            type="int_array",
        ),
        Param("offload_margin_ms", 20.0, "safety margin on the predicted cloud round trip", range=(0.0, 1e5)),
        Param("offload_prior_rtt_ms", 100.0, "cloud round trip assumed before any is measured", range=(0.0, 1e5)),
        Param("offload_prior_bandwidth_mbps", 5.0, "uplink assumed before any is measured", range=(0.001, 1e5)),
        Param("offload_min_bandwidth_mbps", 0.2, "measured uplink below this: nothing is offloaded", range=(0.0, 1e5)),
        Param("offload_max_backlog", 8, "requests sent and not answered: more, and nothing is sent", range=(1, 10000)),
        Param(
            "offload_overload_threshold",
            0.05,
            "share of recent parts the edge could not inspect above which those parts are offloaded too",
            range=(0.0, 1.0),
        ),
        Param(
            "offload_second_opinion_share",
            0.0,
            "share of the NORMAL parts, those the edge passed with the highest defect probability, also offloaded "
            "for a second opinion against escapes (0 = none; at most half the link's backlog)",
            range=(0.0, 0.5),
        ),
        Param("max_verify_response_bytes", 4096, "largest verify response", range=(256, MB)),
        Param("frame_buffer", 16, "recent frames kept for samples/offload", range=(1, 1000)),
        Param(
            "simulated_inputs",
            "",
            "comma-separated simulated inputs named in part/reject/process records; set by the runner/launch file",
        ),
    ),
)
