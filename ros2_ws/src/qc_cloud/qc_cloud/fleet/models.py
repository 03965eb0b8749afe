"""The fleet database (SQLAlchemy 2), the same on SQLite and PostgreSQL. Schema changes are Alembic migrations
(migrations/versions); models.py describes the head revision. Times are naive UTC.

Exactly-once: every record's (cell, id) is inserted into `record_ids` first; only the rows that insert
created are written to their stream table, in the same transaction. On PostgreSQL `parts` is partitioned by
day on `time` (the decision time), so retention drops whole partitions (see db.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite autoincrements only an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
CELL = 200  # site/line/cell, 3 x 64 + 2
RID = 128


class Base(DeclarativeBase):
    pass


class Cell(Base):
    __tablename__ = "cells"
    name: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)
    presence: Mapped[str | None] = mapped_column(String(16))  # online / offline (retained status, last will)
    presence_reason: Mapped[str | None] = mapped_column(String(256))
    presence_time: Mapped[datetime | None] = mapped_column(DateTime)  # when the service received it
    presence_details: Mapped[dict | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(256))
    model_state: Mapped[str | None] = mapped_column(String(32))
    throughput_pps: Mapped[float | None] = mapped_column(Float)  # latest KPI record
    yield_ratio: Mapped[float | None] = mapped_column(Float)
    kpi_time: Mapped[datetime | None] = mapped_column(DateTime)
    last_alert_id: Mapped[int | None] = mapped_column(BigInteger)


class RecordId(Base):
    __tablename__ = "record_ids"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class Part(Base):
    __tablename__ = "parts"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime, primary_key=True)  # decision (else capture, else received)
    epoch: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger)
    part_id: Mapped[str] = mapped_column(String(256))
    verdict: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list] = mapped_column(JSON)
    defect_probability: Mapped[float | None] = mapped_column(Float)
    process_anomaly_score: Mapped[float | None] = mapped_column(Float)
    process_flags: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[str] = mapped_column(String(256))
    encoder_count: Mapped[int] = mapped_column(BigInteger)
    capture_time: Mapped[datetime | None] = mapped_column(DateTime)
    decision_time: Mapped[datetime | None] = mapped_column(DateTime)
    capture_to_decision_ms: Mapped[float | None] = mapped_column(Float)
    simulated: Mapped[list | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (
        Index("ix_parts_cell_time", "cell", "time"),
        Index("ix_parts_time", "time"),
        Index("ix_parts_part_id", "part_id"),
    )


class PartRollup(Base):
    """Parts per cell and hour, kept by ingest in the same transaction as the parts (never by a page view)."""

    __tablename__ = "part_rollups"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    parts: Mapped[int] = mapped_column(BigInteger, default=0)
    normal: Mapped[int] = mapped_column(BigInteger, default=0)
    reinspect: Mapped[int] = mapped_column(BigInteger, default=0)
    defective: Mapped[int] = mapped_column(BigInteger, default=0)
    not_inspected: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_n: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_max_ms: Mapped[float] = mapped_column(Float, default=0.0)
    __table_args__ = (Index("ix_part_rollups_hour", "hour"),)


class Kpi(Base):
    __tablename__ = "kpis"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    window_s: Mapped[float | None] = mapped_column(Float)
    parts: Mapped[int] = mapped_column(BigInteger)
    verdicts: Mapped[dict] = mapped_column(JSON)
    yield_ratio: Mapped[float | None] = mapped_column(Float)
    throughput_pps: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[dict] = mapped_column(JSON)
    reasons: Mapped[dict] = mapped_column(JSON)
    total_parts: Mapped[int] = mapped_column(BigInteger)
    # The record's optional drift histograms (migration 0008): {"model_version", "parts", "histograms"}.
    distributions: Mapped[dict | None] = mapped_column(JSON)
    __table_args__ = (Index("ix_kpis_cell_time", "cell", "time"),)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cell: Mapped[str] = mapped_column(String(CELL))
    record_id: Mapped[str] = mapped_column(String(RID))
    time: Mapped[datetime] = mapped_column(DateTime)
    severity: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(256))
    code: Mapped[str] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(String(4096))
    part_id: Mapped[str] = mapped_column(String(256))
    acked_at: Mapped[datetime | None] = mapped_column(DateTime)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    ack_note: Mapped[str | None] = mapped_column(String(1024))
    __table_args__ = (
        UniqueConstraint("cell", "record_id", name="uq_alerts_cell_record"),
        Index("ix_alerts_time", "time"),
        Index("ix_alerts_cell_time", "cell", "time"),
    )


class RejectEvent(Base):
    __tablename__ = "rejects"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    part_id: Mapped[str] = mapped_column(String(256))
    verdict: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(256))
    lane: Mapped[str] = mapped_column(String(256))
    planned_time: Mapped[datetime | None] = mapped_column(DateTime)
    actual_time: Mapped[datetime | None] = mapped_column(DateTime)
    lateness_ms: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(String(4096))
    __table_args__ = (Index("ix_rejects_cell_part", "cell", "part_id"), Index("ix_rejects_time", "time"))


class ProcessState(Base):
    __tablename__ = "process_states"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    pressure_pa: Mapped[float | None] = mapped_column(Float)
    vibration_rms: Mapped[float | None] = mapped_column(Float)
    anomaly_score: Mapped[float | None] = mapped_column(Float)
    flags: Mapped[int] = mapped_column(BigInteger)
    out_of_spec: Mapped[bool] = mapped_column(Boolean)
    stale: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (Index("ix_process_cell_time", "cell", "time"),)


class ModelStatus(Base):
    __tablename__ = "model_statuses"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    event: Mapped[str] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(256))
    active_version: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(String(4096))
    sha256: Mapped[str | None] = mapped_column(String(64))
    backend: Mapped[str | None] = mapped_column(String(64))
    precision: Mapped[str | None] = mapped_column(String(32))
    defect_types: Mapped[list | None] = mapped_column(JSON)  # migration 0003: types the model was trained on
    role: Mapped[str | None] = mapped_column(String(16))  # migration 0006: an update's role (live / shadow)
    shadow_version: Mapped[str | None] = mapped_column(String(256))  # migration 0006: the cell's shadow model
    shadow_counts: Mapped[dict | None] = mapped_column(JSON)  # migration 0006: shadow_state's scored/skipped
    __table_args__ = (Index("ix_model_cell_time", "cell", "time"),)


class Sample(Base):
    """An image record (sample or verify_request): metadata here, the JPEG in the content-addressed store."""

    __tablename__ = "samples"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime] = mapped_column(DateTime)
    part_id: Mapped[str] = mapped_column(String(256))
    verdict: Mapped[str] = mapped_column(String(16))
    defect_probability: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[list] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(256))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64))  # migration 0003: CAM JPEG in the same store
    random_sample: Mapped[bool] = mapped_column(Boolean, default=False)  # 0003: picked by the cell's random rate
    __table_args__ = (Index("ix_samples_cell_part", "cell", "part_id"), Index("ix_samples_time", "time"))


class VerifyResult(Base):
    __tablename__ = "verify_results"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)  # received
    part_id: Mapped[str] = mapped_column(String(256))
    request_id: Mapped[str] = mapped_column(String(256))
    local_verdict: Mapped[str] = mapped_column(String(16))
    cloud_verdict: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))
    rtt_ms: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_verify_cell_part", "cell", "part_id"),)


class ReconcileFinding(Base):
    """The edge reconciler's finding on one part (reconcile records, issue 17): the fleet's check that every
    DEFECTIVE / NOT_INSPECTED part got exactly one terminal reject event and every REINSPECT part its divert."""

    __tablename__ = "reconcile_findings"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)  # the part's deadline (capture when none)
    part_id: Mapped[str] = mapped_column(String(256))
    verdict: Mapped[str] = mapped_column(String(16))
    has_verdict: Mapped[bool] = mapped_column(Boolean)
    lane: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))  # RESOLVED, OVERDUE, DUPLICATE
    outcome: Mapped[str | None] = mapped_column(String(16))
    terminal_events: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_reconcile_cell_part", "cell", "part_id"), Index("ix_reconcile_status", "status"))


class ShadowScore(Base):
    """A shadow model's score of one part (shadow_score records, migration 0006): joined with the part's record
    (cell, part_id) to measure the shadow's agreement with the live verdicts before it decides anything."""

    __tablename__ = "shadow_scores"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)  # when the shadow scored the part
    part_id: Mapped[str] = mapped_column(String(256))
    shadow_version: Mapped[str] = mapped_column(String(256))
    live_version: Mapped[str] = mapped_column(String(256))
    defect_probability: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        Index("ix_shadow_cell_version_time", "cell", "shadow_version", "time"),
        Index("ix_shadow_cell_part", "cell", "part_id"),
    )


class Verification(Base):
    """What the cloud verifier did with one verify/request (verification records, migration 0005): the cloud's
    answer next to the edge's. Not a cell stream: keyed by the request it answers (rules.verification_key)."""

    __tablename__ = "verifications"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(RID), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)  # answered_time
    request_id: Mapped[str] = mapped_column(String(256))
    part_id: Mapped[str] = mapped_column(String(256))
    verifier: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))  # scored, expired, refused
    reason: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(16))  # the cloud's
    defect_probability: Mapped[float | None] = mapped_column(Float)
    local_verdict: Mapped[str | None] = mapped_column(String(16))  # the edge's, as sent in the request
    local_defect_probability: Mapped[float | None] = mapped_column(Float)
    edge_model_version: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(256))
    received_time: Mapped[datetime | None] = mapped_column(DateTime)
    deadline: Mapped[datetime | None] = mapped_column(DateTime)
    queue_ms: Mapped[float | None] = mapped_column(Float)
    service_ms: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    image_bytes: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        Index("ix_verifications_cell_part", "cell", "part_id"),
        Index("ix_verifications_cell_time", "cell", "time"),
    )


class Stream(Base):
    __tablename__ = "streams"
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    epoch: Mapped[str] = mapped_column(String(16), primary_key=True)
    max_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    missing: Mapped[int] = mapped_column(BigInteger, default=0)
    last_received: Mapped[datetime] = mapped_column(DateTime)


class Gap(Base):
    __tablename__ = "gaps"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cell: Mapped[str] = mapped_column(String(CELL))
    kind: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[str] = mapped_column(String(16))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (Index("ix_gaps_stream", "cell", "kind", "epoch"),)


class Quarantine(Base):
    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    topic: Mapped[str] = mapped_column(String(1024))
    reason: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # size-capped


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


# --- dashboard (migration 0002) ---


class User(Base):
    """A dashboard account: role viewer < operator < engineer < admin; password hashed with argon2id."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    password_changed_at: Mapped[datetime] = mapped_column(DateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("username", name="uq_users_username"),)


class Session(Base):
    """A logged-in browser: the cookie holds a random token, the database its SHA-256."""

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (Index("ix_sessions_expires", "expires_at"),)


class Label(Base):
    """An operator's answer on an image sample. A correction adds a row (current) and clears `current` on the
    row it replaces (kept: the history)."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cell: Mapped[str] = mapped_column(String(CELL))
    sample_record_id: Mapped[str] = mapped_column(String(RID))
    part_id: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str] = mapped_column(String(16))  # good / defective / unsure
    defect_type: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(String(1024), default="")
    labelled_by: Mapped[str] = mapped_column(String(64))
    labelled_at: Mapped[datetime] = mapped_column(DateTime)
    current: Mapped[bool] = mapped_column(Boolean)
    replaces_id: Mapped[int | None] = mapped_column(BigId)
    __table_args__ = (
        Index("ix_labels_sample", "cell", "sample_record_id", "current"),
        Index("ix_labels_time", "labelled_at"),
    )


class LoginFailure(Base):
    """A failed log-in (migration 0003): the throttle counts these, so every API worker sees the same count."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (Index("ix_login_failures_name_at", "username", "at"),)


# --- staged rollouts (migration 0007) ---


class Rollout(Base):
    """A staged rollout of one signed candidate: state running -> completed | rolled_back | aborting -> aborted."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    candidate_version: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[int] = mapped_column(Integer)  # index of the current stage
    plan: Mapped[dict] = mapped_column(JSON)  # the validated plan (rules, defaults filled in)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(String(1024))
    abort_requested_by: Mapped[str | None] = mapped_column(String(128))
    __table_args__ = (Index("ix_rollouts_state", "state"),)


class RolloutStage(Base):
    """One stage: its cells (resolved at start), its signed update (targeted at exactly those cells)."""

    __tablename__ = "rollout_stages"
    rollout_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # shadow | live
    cells: Mapped[list] = mapped_column(JSON)
    min_parts: Mapped[int] = mapped_column(Integer)
    watch_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # pending, watching, passed, failed, rolled_back, skipped
    manifest: Mapped[dict] = mapped_column(JSON)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)  # when its update was published
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    health: Mapped[dict | None] = mapped_column(JSON)  # the last evaluation


class RolloutRollback(Base):
    """A cell's pre-signed rollback (rollback_from = candidate, to the version the cell ran at start)."""

    __tablename__ = "rollout_rollbacks"
    rollout_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    cell: Mapped[str] = mapped_column(String(CELL), primary_key=True)
    from_version: Mapped[str] = mapped_column(String(256))
    to_version: Mapped[str] = mapped_column(String(256))
    manifest: Mapped[dict] = mapped_column(JSON)
    published_at: Mapped[datetime | None] = mapped_column(DateTime)


class RolloutEvent(Base):
    """Every step of a rollout: who (user:<name>, token:<name>, controller), what, when."""

    __tablename__ = "rollout_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(BigId)
    time: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(64))
    stage: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict] = mapped_column(JSON)
    __table_args__ = (Index("ix_rollout_events_rollout", "rollout_id", "id"),)


class DriftReference(Base):
    """What a model's inputs and scores looked like when it was judged good (migration 0008): the fixed-bin
    histograms (qc_contract.drift.BINS) of its validation data (source "validation", cell "*": every cell) or of
    the first parts a cell ran it on (source "line", collected by the fleet until `parts` reached the target,
    then `complete`)."""

    __tablename__ = "drift_references"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cell: Mapped[str] = mapped_column(String(CELL))
    model_version: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(16))  # validation / line
    parts: Mapped[int] = mapped_column(BigInteger)
    histograms: Mapped[dict] = mapped_column(JSON)
    complete: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("cell", "model_version", "source", name="uq_drift_references"),)


class DriftEpisode(Base):
    """One drift episode of a cell (migration 0008): opened with one alert when a statistic's PSI reached the
    alert threshold, cleared when every statistic of its kind was back below the watch threshold."""

    __tablename__ = "drift_episodes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cell: Mapped[str] = mapped_column(String(CELL))
    code: Mapped[str] = mapped_column(String(32))  # INPUT_DRIFT / SCORE_DRIFT
    model_version: Mapped[str] = mapped_column(String(256))
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime)
    peak_psi: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict] = mapped_column(JSON)  # at opening: statistic, PSI, reference vs recent bins, window
    last_evidence: Mapped[dict] = mapped_column(JSON)  # the latest assessment while open (the clearing one at the end)
    alert_id: Mapped[int | None] = mapped_column(BigId)
    __table_args__ = (Index("ix_drift_episodes_cell_code", "cell", "code", "cleared_at"),)
