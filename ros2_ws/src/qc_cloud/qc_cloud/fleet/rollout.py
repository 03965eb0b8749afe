"""Staged rollout with automatic rollback (issue 22): plan validation, health rules and the controller step.
No MQTT client and no web framework here: the service gives the controller a `publish(cell, manifest)` callable.

A rollout is signed up front: `qc_cloud rollout start --key` signs, per stage, the update targeted at exactly that
stage's cells (role shadow or live) and, per cell of a live stage, the rollback (rollback_from = candidate, back
to the version the cell ran at start). The controller (in `qc_cloud serve`) only publishes those stored
manifests: the private key never lives in the always-running service.

Per step, for each running rollout: a pending stage gets its update published (stage `watching`); a watching
stage is judged on the parts its cells decided with the candidate since the stage started, against the same
cells' parts by their previous model before the rollout (the baseline). A broken rule publishes the stage's
rollbacks, raises an alert per cell and stops the rollout; a stage passes after min_parts candidate parts AND
its watch window with no rule broken. Cells of later stages never get the candidate. Everything is in the
database: a restarted service resumes where the last committed step left it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select

from qc_cloud.fleet import models, queries, rules
from qc_contract import update_manifest
from qc_contract.update_manifest import ROLE_LIVE, ROLE_SHADOW, target_matches

# rollouts.state
RUNNING, COMPLETED, ROLLED_BACK, ABORTING, ABORTED = "running", "completed", "rolled_back", "aborting", "aborted"
ACTIVE_STATES = (RUNNING, ABORTING)
# rollout_stages.state
PENDING, WATCHING, PASSED, FAILED = "pending", "watching", "passed", "failed"

CONTROLLER = "controller"
ALERT_SOURCE = "rollout"
ALERT_CODE = "ROLLOUT_ROLLED_BACK"

DEFAULT_MIN_PARTS = 200
DEFAULT_WATCH_S = 900.0
DEFAULT_RULES: dict[str, dict[str, float | None]] = {
    # rates: candidate - baseline must stay <= max_increase; `max` (optional) caps the candidate's rate itself
    "not_inspected_rate": {"max_increase": 0.02, "max": None},
    "reinspect_rate": {"max_increase": 0.05, "max": None},
    "reject_rate": {"max_increase": 0.05, "max": None},
    "label_disagreement": {"max_increase": 0.05, "max": None, "min_labels": 20},
    # capture-to-decision latency p99: <= baseline * max_ratio, and <= max_ms when given
    "latency_p99_ms": {"max_ratio": 1.5, "max_ms": None},
    # model_status failures on the stage's cells since it started (update_rejected for the candidate, FAILED state)
    "model_errors": {"max": 0},
    # shadow stages (judged on the candidate's shadow scores, not on live parts): the share of inspected parts
    # whose shadow band (score put into shadow_bands) equals the live verdict must be >= min
    "shadow_agreement": {"min": 0.9},
    # on operator-labelled parts the shadow scored: its escape / false-reject rate (by its band) minus the live
    # verdicts' on the same parts; judged from min_labels labelled parts on
    "shadow_label_errors": {"max_escape_increase": 0.0, "max_false_reject_increase": 0.02, "min_labels": 20},
    # a shadow that skips more than this share of the parts offered (its cells' shadow_state counts) cannot be
    # judged: the stage waits (never passes), and its status says why; it does not fail
    "shadow_skip_share": {"max": 0.8},
    # the shadow's model-call p99 <= the live capture-to-decision p99 of the same cells x max_ratio (it runs at the
    # lowest priority in spare time, so it is a pessimistic figure), and <= max_ms when given
    "shadow_latency_p99_ms": {"max_ratio": 2.0, "max_ms": None},
}
UNBOUNDED = {"latency_p99_ms", "model_errors", "shadow_latency_p99_ms"}  # thresholds not rates: no 1.0 cap
DEFAULT_SHADOW_BANDS = {"reinspect": 0.5, "defective": 0.8}  # the decision node's default bands
RATE_RULES = ("not_inspected_rate", "reinspect_rate", "reject_rate")
RATE_VERDICT = {"not_inspected_rate": "NOT_INSPECTED", "reinspect_rate": "REINSPECT", "reject_rate": "DEFECTIVE"}
PLAN_KEYS = {"name", "stages", "rules", "min_parts_to_judge", "baseline_hours", "expires_in_h", "shadow_bands"}
STAGE_KEYS = {"name", "role", "cells", "min_parts", "watch_s"}
MAX_LATENCY_SAMPLES = 200_000
# Record times are the cells' clocks, the stage's start the service's: candidate parts and model errors count from
# this long before the stage started (the candidate's parts are told apart by parts.model_version anyway).
CLOCK_SKEW = timedelta(seconds=120)


class PlanError(ValueError):
    """A rollout plan that cannot run, with the reason."""


class RolloutError(ValueError):
    """A request on a rollout that its state does not allow."""


# ---- the plan -----------------------------------------------------------------------------------------------


@dataclass
class StagePlan:
    name: str
    role: str
    cells: list[str]  # patterns as written
    min_parts: int
    watch_s: float


@dataclass
class Plan:
    name: str
    stages: list[StagePlan]
    rules: dict[str, dict[str, float | None]]
    min_parts_to_judge: int = 50  # rates are judged once a stage has this many candidate parts
    baseline_hours: float = 24.0  # the previous model's parts on the same cells, this far back from the start
    expires_in_h: float = 21 * 24.0  # every signed manifest of the rollout expires
    # the verdict bands a shadow score is put into to compare it with the live verdict (the cells' bands)
    shadow_bands: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHADOW_BANDS))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": [s.__dict__ for s in self.stages],
            "rules": self.rules,
            "min_parts_to_judge": self.min_parts_to_judge,
            "baseline_hours": self.baseline_hours,
            "expires_in_h": self.expires_in_h,
            "shadow_bands": self.shadow_bands,
        }


def _number(value: Any, what: str, low: float, high: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(f"{what} must be a number, not {value!r}")
    if integer and int(value) != value:
        raise PlanError(f"{what} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise PlanError(f"{what} must be within [{low:g}, {high:g}], not {value!r}")
    return int(value) if integer else float(value)


def parse_plan(data: Any, default_name: str = "") -> Plan:
    """A validated plan from its YAML/JSON object; every error names the field."""
    if not isinstance(data, Mapping):
        raise PlanError("a rollout plan is a mapping with `stages` (and optionally name, rules, ...)")
    unknown = set(data) - PLAN_KEYS
    if unknown:
        raise PlanError(f"unknown plan field(s) {sorted(unknown)}; known: {sorted(PLAN_KEYS)}")
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise PlanError("`stages` must be a non-empty list (shadow -> canary -> line -> fleet)")
    stages: list[StagePlan] = []
    for i, s in enumerate(stages_data):
        where = f"stages[{i}]"
        if not isinstance(s, Mapping):
            raise PlanError(f"{where} must be a mapping with name and cells")
        unknown = set(s) - STAGE_KEYS
        if unknown:
            raise PlanError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(STAGE_KEYS)}")
        name = s.get("name", f"stage{i + 1}")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise PlanError(f"{where}.name must be a string of 1..64 characters")
        role = s.get("role", ROLE_LIVE)
        if role not in (ROLE_LIVE, ROLE_SHADOW):
            raise PlanError(f"{where} ({name}): role must be {ROLE_LIVE!r} or {ROLE_SHADOW!r}, not {role!r}")
        if role == ROLE_SHADOW and any(st.role == ROLE_LIVE for st in stages):
            raise PlanError(f"{where} ({name}): a shadow stage must come before every live stage")
        cells = s.get("cells")
        if isinstance(cells, str):
            cells = [cells]
        if not isinstance(cells, list) or not cells:
            raise PlanError(f"{where} ({name}): cells must be a non-empty list of site/line/cell patterns")
        for pattern in cells:
            if not isinstance(pattern, str) or len(pattern.split("/")) != 3 or not all(pattern.split("/")):
                raise PlanError(
                    f"{where} ({name}): cell pattern {pattern!r} must be site/line/cell (globs per segment)"
                )
        min_parts = _number(s.get("min_parts", DEFAULT_MIN_PARTS), f"{where}.min_parts", 1, 10_000_000, True)
        watch_s = _number(s.get("watch_s", DEFAULT_WATCH_S), f"{where}.watch_s", 0, 30 * 86400)
        stages.append(StagePlan(name, role, list(cells), int(min_parts), watch_s))
    if len({s.name for s in stages}) != len(stages):
        raise PlanError("stage names must differ")
    if not any(s.role == ROLE_LIVE for s in stages):
        raise PlanError("a plan needs at least one live stage")
    rules_data = data.get("rules", {}) or {}
    if not isinstance(rules_data, Mapping):
        raise PlanError("`rules` must be a mapping of rule name -> thresholds")
    merged: dict[str, dict[str, float | None]] = {k: dict(v) for k, v in DEFAULT_RULES.items()}
    for rule, thresholds in rules_data.items():
        if rule not in DEFAULT_RULES:
            raise PlanError(f"unknown rule {rule!r}; known: {sorted(DEFAULT_RULES)}")
        if not isinstance(thresholds, Mapping):
            raise PlanError(f"rules.{rule} must be a mapping of thresholds, e.g. {DEFAULT_RULES[rule]}")
        for key, value in thresholds.items():
            if key not in DEFAULT_RULES[rule]:
                raise PlanError(f"rules.{rule}: unknown threshold {key!r}; known: {sorted(DEFAULT_RULES[rule])}")
            if value is not None:
                high = 1.0 if rule not in UNBOUNDED and key != "min_labels" else 1e9
                value = _number(value, f"rules.{rule}.{key}", 0, high)
            merged[rule][key] = value
    bands_data = data.get("shadow_bands", DEFAULT_SHADOW_BANDS)
    if not isinstance(bands_data, Mapping) or set(bands_data) != set(DEFAULT_SHADOW_BANDS):
        raise PlanError("`shadow_bands` must be a mapping {reinspect: P, defective: P} (default 0.5 / 0.8)")
    shadow_bands = {k: _number(bands_data[k], f"shadow_bands.{k}", 0, 1) for k in DEFAULT_SHADOW_BANDS}
    if shadow_bands["reinspect"] > shadow_bands["defective"]:
        raise PlanError("shadow_bands.reinspect must not exceed shadow_bands.defective")
    name = data.get("name", default_name)
    if not isinstance(name, str) or len(name) > 128:
        raise PlanError("`name` must be a string of at most 128 characters")
    return Plan(
        name=name,
        stages=stages,
        rules=merged,
        min_parts_to_judge=int(_number(data.get("min_parts_to_judge", 50), "min_parts_to_judge", 1, 1e7, True)),
        baseline_hours=_number(data.get("baseline_hours", 24.0), "baseline_hours", 0.01, 24 * 366),
        expires_in_h=_number(data.get("expires_in_h", 21 * 24.0), "expires_in_h", 0.01, 366 * 24),
        shadow_bands=shadow_bands,
    )


def load_plan(path: str | Path, default_name: str = "") -> Plan:
    """A plan file: YAML (.yaml/.yml) or JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"plan {path}: {exc.strerror or exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"plan {path}: not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"plan {path}: not valid JSON (use .yaml/.yml for YAML): {exc}") from None
    try:
        return parse_plan(data, default_name)
    except PlanError as exc:
        raise PlanError(f"plan {path}: {exc}") from None


@dataclass
class ResolvedStage:
    name: str
    role: str
    cells: list[str]
    min_parts: int
    watch_s: float


def resolve_stages(plan: Plan, cell_versions: Mapping[str, str], candidate: str) -> list[ResolvedStage]:
    """The plan's patterns resolved against the cells the fleet knows (cell -> the version it runs now). A live
    stage takes the matching cells no earlier live stage took; every stage must get at least one cell, and no
    live cell may already run the candidate (or something newer)."""
    taken: set[str] = set()
    out: list[ResolvedStage] = []
    for stage in plan.stages:
        cells = sorted(c for c in cell_versions if any(target_matches(p, c) for p in stage.cells))
        if stage.role == ROLE_LIVE:
            cells = [c for c in cells if c not in taken]
            taken.update(cells)
        if not cells:
            raise PlanError(
                f"stage {stage.name}: no {'new ' if stage.role == ROLE_LIVE else ''}cell matches {stage.cells} "
                f"(the fleet knows {len(cell_versions)} cell(s))"
            )
        for cell in cells if stage.role == ROLE_LIVE else ():
            current = cell_versions[cell]
            if not current:
                raise PlanError(f"stage {stage.name}: cell {cell} reported no model version yet: no rollback target")
            if update_manifest.compare_versions(current, candidate) >= 0:
                raise PlanError(f"stage {stage.name}: cell {cell} runs {current}, not older than {candidate}")
        out.append(ResolvedStage(stage.name, stage.role, cells, stage.min_parts, stage.watch_s))
    return out


def cell_versions(conn: Connection) -> dict[str, str]:
    """cell -> the model version it runs now: its model_status (cells.model_version), else its latest part's."""
    c, p = models.Cell.__table__, models.Part.__table__
    out = {row.name: row.model_version or "" for row in conn.execute(select(c.c.name, c.c.model_version))}
    for cell in [name for name, version in out.items() if not version]:
        latest = conn.execute(
            select(p.c.model_version).where(p.c.cell == cell).order_by(p.c.time.desc()).limit(1)
        ).scalar()
        out[cell] = latest or ""
    return out


# ---- recording --------------------------------------------------------------------------------------------


def _event(conn: Connection, rollout_id: int, actor: str, event: str, stage: int | None, **detail: Any) -> None:
    conn.execute(
        models.RolloutEvent.__table__.insert().values(
            rollout_id=rollout_id, time=rules.utcnow(), actor=actor[:128], event=event, stage=stage, detail=detail
        )
    )


def create(
    conn: Connection,
    plan: Plan,
    candidate: str,
    stages: list[ResolvedStage],
    stage_manifests: list[dict],
    rollbacks: Mapping[str, dict],
    actor: str,
) -> int:
    """Store a signed rollout (state running). One active rollout at a time."""
    r = models.Rollout.__table__
    active = conn.execute(select(r.c.id, r.c.name).where(r.c.state.in_(ACTIVE_STATES))).first()
    if active is not None:
        raise RolloutError(f"rollout {active.id} ({active.name}) is still active: abort it or let it finish first")
    now = rules.utcnow()
    rollout_id = conn.execute(
        r.insert()
        .values(
            name=plan.name or candidate,
            candidate_version=candidate,
            state=RUNNING,
            stage=0,
            plan=plan.to_json(),
            created_at=now,
            created_by=actor[:128],
            updated_at=now,
            reason="",
        )
        .returning(r.c.id)
    ).scalar_one()
    for idx, (stage, manifest) in enumerate(zip(stages, stage_manifests, strict=True)):
        conn.execute(
            models.RolloutStage.__table__.insert().values(
                rollout_id=rollout_id,
                idx=idx,
                name=stage.name,
                role=stage.role,
                cells=stage.cells,
                min_parts=stage.min_parts,
                watch_s=stage.watch_s,
                state=PENDING,
                manifest=manifest,
            )
        )
    for cell, manifest in rollbacks.items():
        conn.execute(
            models.RolloutRollback.__table__.insert().values(
                rollout_id=rollout_id,
                cell=cell,
                from_version=manifest["rollback_from"],
                to_version=manifest["version"],
                manifest=manifest,
            )
        )
    _event(
        conn,
        rollout_id,
        actor,
        "started",
        None,
        candidate=candidate,
        stages=[{"name": s.name, "role": s.role, "cells": s.cells} for s in stages],
    )
    return rollout_id


def request_abort(conn: Connection, rollout_id: int, actor: str, note: str = "") -> dict[str, Any]:
    """Mark a running rollout for abort; the controller's next step rolls back every cell on the candidate."""
    r = models.Rollout.__table__
    row = conn.execute(select(r).where(r.c.id == rollout_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no rollout {rollout_id}")
    if row.state != RUNNING:
        raise RolloutError(f"rollout {rollout_id} is {row.state}: only a running rollout can be aborted")
    conn.execute(
        r.update()
        .where(r.c.id == rollout_id)
        .values(
            state=ABORTING, abort_requested_by=actor[:128], updated_at=rules.utcnow(), reason=f"aborted: {note}"[:1024]
        )
    )
    _event(conn, rollout_id, actor, "abort_requested", row.stage, note=note[:1024])
    return {"id": rollout_id, "state": ABORTING}


# ---- health ---------------------------------------------------------------------------------------------------


_p99 = queries.p99


def _part_figures(conn: Connection, where) -> dict[str, Any]:
    p = models.Part.__table__
    counts = dict(conn.execute(select(p.c.verdict, func.count()).where(where).group_by(p.c.verdict)).all())
    n = sum(counts.values())
    latencies = [
        v
        for (v,) in conn.execute(
            select(p.c.capture_to_decision_ms)
            .where(where, p.c.capture_to_decision_ms.is_not(None))
            .limit(MAX_LATENCY_SAMPLES)
        )
    ]
    out: dict[str, Any] = {"parts": n, "latency_p99_ms": _p99(latencies)}
    for rule, verdict in RATE_VERDICT.items():
        out[rule] = counts.get(verdict, 0) / n if n else None
    return out


def _label_figures(conn: Connection, where) -> dict[str, Any]:
    s, lab = models.Sample.__table__, models.Label.__table__
    rows = conn.execute(
        select(s.c.verdict, lab.c.answer)
        .select_from(s.join(lab, and_(lab.c.cell == s.c.cell, lab.c.sample_record_id == s.c.record_id)))
        .where(where, lab.c.current.is_(True), lab.c.answer.in_(("good", "defective")))
    ).all()
    disagree = sum(
        1 for verdict, answer in rows if (answer == "good") == (verdict == "DEFECTIVE") and verdict != "REINSPECT"
    )
    return {"labels": len(rows), "label_disagreement": disagree / len(rows) if rows else None}


def stage_health(
    conn: Connection,
    cells: list[str],
    candidate: str,
    previous: Mapping[str, str],
    since: datetime,
    baseline_since: datetime,
    role: str,
    plan_rules: Mapping[str, Mapping[str, float | None]],
    min_parts_to_judge: int,
    shadow_bands: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The stage's figures (candidate vs the previous model's baseline on the same cells) and the rules broken.
    A live stage is judged on the parts its cells decided with the candidate. A shadow stage's live model is
    unchanged: it is judged on the candidate's shadow scores (queries.shadow_stage_figures, the figures of the
    /shadow endpoint) against the live verdicts of the same parts, and on model errors. `waiting` lists why a
    shadow stage cannot be judged yet (too few shadow scores, a shadow that skips almost every part)."""
    p, s, ms = models.Part.__table__, models.Sample.__table__, models.ModelStatus.__table__
    baseline_until, since = since, since - CLOCK_SKEW
    if role == ROLE_LIVE:
        cand_parts = and_(p.c.cell.in_(cells), p.c.model_version == candidate, p.c.time >= since)
        base_parts = and_(
            or_(*(and_(p.c.cell == c, p.c.model_version == previous.get(c, "")) for c in cells)),
            p.c.time >= baseline_since,
            p.c.time < baseline_until,
        )
        cand_samples = and_(s.c.cell.in_(cells), s.c.model_version == candidate, s.c.time >= since)
        base_samples = and_(
            or_(*(and_(s.c.cell == c, s.c.model_version == previous.get(c, "")) for c in cells)),
            s.c.time >= baseline_since,
            s.c.time < baseline_until,
        )
        candidate_fig = {**_part_figures(conn, cand_parts), **_label_figures(conn, cand_samples)}
        baseline_fig = {**_part_figures(conn, base_parts), **_label_figures(conn, base_samples)}
    else:
        bands = {**DEFAULT_SHADOW_BANDS, **(shadow_bands or {})}
        shadow = queries.shadow_stage_figures(conn, cells, candidate, since, bands["reinspect"], bands["defective"])
        candidate_fig = {  # parts = shadow-scored parts: what min_parts and min_parts_to_judge count
            "parts": shadow["parts"],
            "matched_parts": shadow["matched_parts"],
            "shadow_agreement": shadow["agreement"],
            "labels": shadow["labels"]["labelled"],
            "escape_rate": shadow["labels"]["shadow"]["escape_rate"],
            "false_reject_rate": shadow["labels"]["shadow"]["false_reject_rate"],
            "latency_p99_ms": shadow["latency_p99_ms"],
            "skip_share": shadow["skip_share"],
            "cell_counts": shadow["cell_counts"],
            "per_cell": shadow["per_cell"],
            "bands": bands,
        }
        live = _part_figures(conn, and_(p.c.cell.in_(cells), p.c.time >= since))  # the live model, same window
        baseline_fig = {
            "parts": live["parts"],
            "latency_p99_ms": live["latency_p99_ms"],
            "escape_rate": shadow["labels"]["live"]["escape_rate"],  # the live verdicts on the same labelled parts
            "false_reject_rate": shadow["labels"]["live"]["false_reject_rate"],
        }
    errors = conn.execute(
        select(ms.c.cell, ms.c.event, ms.c.reason, ms.c.message).where(
            ms.c.cell.in_(cells),
            ms.c.time >= since,
            or_(and_(ms.c.event == "update_rejected", ms.c.version == candidate), ms.c.state == "FAILED"),
        )
    ).all()
    candidate_fig["model_errors"] = len(errors)
    broken: list[dict[str, Any]] = []

    def brk(rule: str, value: Any, limit: Any, text: str) -> None:
        broken.append({"rule": rule, "value": value, "limit": limit, "message": text})

    max_errors = plan_rules["model_errors"].get("max") or 0
    if len(errors) > max_errors:
        first = errors[0]
        brk(
            "model_errors",
            len(errors),
            max_errors,
            f"model_errors {len(errors)} > {max_errors:g}: {first.cell} {first.event} "
            f"{first.reason or ''} {first.message}",
        )
    waiting: list[str] = []
    if role == ROLE_SHADOW:
        judged = _judge_shadow(candidate_fig, baseline_fig, plan_rules, min_parts_to_judge, brk, waiting)
    else:
        judged = _judge_live(candidate_fig, baseline_fig, plan_rules, min_parts_to_judge, brk, waiting)
    return {
        "candidate": candidate_fig,
        "baseline": baseline_fig,
        "judged": judged,
        "broken": broken,
        "waiting": waiting,
    }


def _judge_live(
    candidate_fig: dict, baseline_fig: dict, plan_rules: Mapping, min_parts_to_judge: int, brk, waiting: list
) -> bool:
    """A live stage's rules on the candidate's parts against the baseline; False (waiting) until enough parts."""
    judged = candidate_fig["parts"] >= min_parts_to_judge
    if judged:
        for rule in (*RATE_RULES, "label_disagreement"):
            value, base, t = candidate_fig.get(rule), baseline_fig.get(rule), plan_rules[rule]
            if value is None:
                continue
            if rule == "label_disagreement" and candidate_fig["labels"] < (t.get("min_labels") or 0):
                continue
            if t.get("max") is not None and value > t["max"]:
                brk(rule, value, t["max"], f"{rule} {value:.4f} > max {t['max']:g}")
            elif base is not None and t.get("max_increase") is not None and value - base > t["max_increase"]:
                brk(
                    rule,
                    value,
                    base + t["max_increase"],
                    f"{rule} {value:.4f} vs baseline {base:.4f} (+{t['max_increase']:g} allowed)",
                )
        value, base, t = (
            candidate_fig.get("latency_p99_ms"),
            baseline_fig.get("latency_p99_ms"),
            plan_rules["latency_p99_ms"],
        )
        if value is not None:
            if t.get("max_ms") is not None and value > t["max_ms"]:
                brk("latency_p99_ms", value, t["max_ms"], f"latency p99 {value:.1f} ms > max {t['max_ms']:g} ms")
            elif base and t.get("max_ratio") is not None and value > base * t["max_ratio"]:
                brk(
                    "latency_p99_ms",
                    value,
                    base * t["max_ratio"],
                    f"latency p99 {value:.1f} ms vs baseline {base:.1f} ms (x{t['max_ratio']:g} allowed)",
                )
    if not judged:
        waiting.append(f"{candidate_fig['parts']} candidate parts, {min_parts_to_judge} needed to judge")
    return judged


def _judge_shadow(cand: dict, base: dict, plan_rules: Mapping, min_parts_to_judge: int, brk, waiting: list) -> bool:
    """The shadow rules on a shadow stage's figures: brk(rule, value, limit, text) for a broken one, a line in
    `waiting` for what keeps the stage from being judged. True when the rules were judged."""
    t = plan_rules.get("shadow_skip_share") or DEFAULT_RULES["shadow_skip_share"]
    skip = cand.get("skip_share")
    if skip is not None and t.get("max") is not None and skip > t["max"]:
        waiting.append(
            f"the shadow skipped {100 * skip:.1f} % of the parts offered (> {100 * t['max']:g} %): too few scores "
            f"to judge it; the cells have no spare time for it (counts {cand.get('cell_counts')})"
        )
    if cand["matched_parts"] < min_parts_to_judge:
        waiting.append(
            f"{cand['matched_parts']} shadow-scored parts with a live verdict, {min_parts_to_judge} needed to judge"
        )
    if waiting:
        return False
    t = plan_rules.get("shadow_agreement") or DEFAULT_RULES["shadow_agreement"]
    value = cand.get("shadow_agreement")
    if value is not None and t.get("min") is not None and value < t["min"]:
        brk(
            "shadow_agreement",
            value,
            t["min"],
            f"shadow_agreement {value:.4f} < min {t['min']:g} ({cand['matched_parts']} parts)",
        )
    t = plan_rules.get("shadow_label_errors") or DEFAULT_RULES["shadow_label_errors"]
    if cand["labels"] >= (t.get("min_labels") or 0):
        for figure, key in (("escape_rate", "max_escape_increase"), ("false_reject_rate", "max_false_reject_increase")):
            value, live = cand.get(figure), base.get(figure)
            if value is None or live is None or t.get(key) is None:
                continue
            if value - live > t[key]:
                brk(
                    "shadow_label_errors",
                    value,
                    live + t[key],
                    f"shadow {figure} {value:.4f} vs live {live:.4f} on {cand['labels']} labelled parts "
                    f"(+{t[key]:g} allowed)",
                )
    t = plan_rules.get("shadow_latency_p99_ms") or DEFAULT_RULES["shadow_latency_p99_ms"]
    value, live = cand.get("latency_p99_ms"), base.get("latency_p99_ms")
    if value is not None:
        if t.get("max_ms") is not None and value > t["max_ms"]:
            text = f"shadow latency p99 {value:.1f} ms > max {t['max_ms']:g} ms"
            brk("shadow_latency_p99_ms", value, t["max_ms"], text)
        elif live and t.get("max_ratio") is not None and value > live * t["max_ratio"]:
            brk(
                "shadow_latency_p99_ms",
                value,
                live * t["max_ratio"],
                f"shadow latency p99 {value:.1f} ms vs live capture-to-decision p99 {live:.1f} ms "
                f"(x{t['max_ratio']:g} allowed)",
            )
    return True


# ---- the controller -----------------------------------------------------------------------------------------

Publish = Callable[[str, dict], None]  # (cell path, signed manifest); raises on failure


@dataclass
class StepReport:
    events: list[tuple[int, str]] = field(default_factory=list)  # (rollout id, event)


class Controller:
    """One step judges and moves every active rollout; `qc_cloud serve` runs it every rollout_interval_s."""

    def __init__(self, engine: Engine, publish: Publish, now: Callable[[], datetime] = rules.utcnow) -> None:
        self.engine, self.publish, self.now = engine, publish, now

    def step(self) -> StepReport:
        report = StepReport()
        r = models.Rollout.__table__
        with self.engine.connect() as conn:
            ids = [i for (i,) in conn.execute(select(r.c.id).where(r.c.state.in_(ACTIVE_STATES)).order_by(r.c.id))]
        for rollout_id in ids:
            with self.engine.begin() as conn:
                row = conn.execute(select(r).where(r.c.id == rollout_id).with_for_update()).first()
                if row is None or row.state not in ACTIVE_STATES:
                    continue
                if row.state == ABORTING:
                    self._abort(conn, row, report)
                else:
                    self._advance(conn, row, report)
        return report

    def _stages(self, conn: Connection, rollout_id: int) -> list[Any]:
        st = models.RolloutStage.__table__
        return conn.execute(select(st).where(st.c.rollout_id == rollout_id).order_by(st.c.idx)).all()

    def _set_stage(self, conn: Connection, rollout_id: int, idx: int, **values: Any) -> None:
        st = models.RolloutStage.__table__
        conn.execute(st.update().where(st.c.rollout_id == rollout_id, st.c.idx == idx).values(**values))

    def _set_rollout(self, conn: Connection, rollout_id: int, **values: Any) -> None:
        r = models.Rollout.__table__
        conn.execute(r.update().where(r.c.id == rollout_id).values(updated_at=self.now(), **values))

    def _advance(self, conn: Connection, row: Any, report: StepReport) -> None:
        stages = self._stages(conn, row.id)
        idx = row.stage
        while idx < len(stages):
            stage = stages[idx]
            now = self.now()
            if stage.state == PENDING:
                expires = rules.parse_time(stage.manifest.get("expires_at"))
                if expires is not None and expires <= now:
                    reason = f"stage {stage.name}: its signed update expired at {stage.manifest['expires_at']}"
                    self._set_rollout(conn, row.id, state=ABORTED, reason=reason)
                    _event(conn, row.id, CONTROLLER, "expired", idx, name=stage.name)
                    report.events.append((row.id, "expired"))
                    return
                for cell in stage.cells:
                    self.publish(cell, stage.manifest)
                self._set_stage(conn, row.id, idx, state=WATCHING, started_at=now)
                _event(
                    conn, row.id, CONTROLLER, "stage_started", idx, name=stage.name, role=stage.role, cells=stage.cells
                )
                report.events.append((row.id, "stage_started"))
                return  # judged from the next step on
            health = self._health(conn, row, stage)
            elapsed = (now - stage.started_at).total_seconds()
            what = "shadow-scored parts" if stage.role == ROLE_SHADOW else "candidate parts"
            if health["candidate"]["parts"] < stage.min_parts:
                health["waiting"].append(f"{health['candidate']['parts']} of {stage.min_parts} {what}")
            if elapsed < stage.watch_s:
                health["waiting"].append(f"watch window: {elapsed:.0f} of {stage.watch_s:g} s")
            self._set_stage(conn, row.id, idx, health=health)
            if health["broken"]:
                self._fail(conn, row, stage, health, report)
                return
            if health["candidate"]["parts"] < stage.min_parts or elapsed < stage.watch_s:
                return
            if not health["judged"]:
                return  # a stage passes only once its rules were judged (min_parts_to_judge; a shadow that scores)
            self._set_stage(conn, row.id, idx, state=PASSED, finished_at=now)
            _event(conn, row.id, CONTROLLER, "stage_passed", idx, name=stage.name, health=health)
            report.events.append((row.id, "stage_passed"))
            idx += 1
            if idx == len(stages):
                self._set_rollout(conn, row.id, state=COMPLETED, reason="every stage passed")
                _event(conn, row.id, CONTROLLER, "completed", None)
                report.events.append((row.id, "completed"))
                return
            self._set_rollout(conn, row.id, stage=idx)
            stages = self._stages(conn, row.id)

    def _health(self, conn: Connection, row: Any, stage: Any) -> dict[str, Any]:
        rb = models.RolloutRollback.__table__
        rows = conn.execute(
            select(rb.c.cell, rb.c.to_version).where(rb.c.rollout_id == row.id, rb.c.cell.in_(stage.cells))
        ).all()
        previous = {cell: version for cell, version in rows}
        plan = row.plan
        return stage_health(
            conn,
            list(stage.cells),
            row.candidate_version,
            previous,
            stage.started_at,
            row.created_at - timedelta(hours=plan["baseline_hours"]),
            stage.role,
            plan["rules"],
            plan["min_parts_to_judge"],
            plan.get("shadow_bands"),
        )

    def _rollback(self, conn: Connection, rollout_id: int, cells: Iterable[str]) -> list[str]:
        rb = models.RolloutRollback.__table__
        rows = conn.execute(
            select(rb).where(rb.c.rollout_id == rollout_id, rb.c.cell.in_(list(cells)), rb.c.published_at.is_(None))
        ).all()
        done = []
        for rbrow in rows:
            self.publish(rbrow.cell, rbrow.manifest)
            conn.execute(
                rb.update()
                .where(rb.c.rollout_id == rollout_id, rb.c.cell == rbrow.cell)
                .values(published_at=self.now())
            )
            done.append(rbrow.cell)
        return sorted(done)

    def _alert(self, conn: Connection, rollout_id: int, cells: list[str], message: str) -> None:
        a, c = models.Alert.__table__, models.Cell.__table__
        for cell in cells:
            record_id = f"rollout-{rollout_id}-rollback"
            exists = conn.execute(select(a.c.id).where(a.c.cell == cell, a.c.record_id == record_id)).first()
            if exists:
                continue
            alert_id = conn.execute(
                a.insert()
                .values(
                    cell=cell,
                    record_id=record_id,
                    time=self.now(),
                    severity="ERROR",
                    source=ALERT_SOURCE,
                    code=ALERT_CODE,
                    message=message[:4096],
                    part_id="",
                )
                .returning(a.c.id)
            ).scalar_one()
            conn.execute(c.update().where(c.c.name == cell).values(last_alert_id=alert_id))

    def _fail(self, conn: Connection, row: Any, stage: Any, health: dict, report: StepReport) -> None:
        now = self.now()
        broken = "; ".join(b["message"] for b in health["broken"])
        _event(
            conn, row.id, CONTROLLER, "rule_broken", stage.idx, name=stage.name, broken=health["broken"], health=health
        )
        cells = self._rollback(conn, row.id, stage.cells) if stage.role == ROLE_LIVE else []
        self._set_stage(conn, row.id, stage.idx, state=FAILED, finished_at=now)
        reason = f"stage {stage.name}: {broken}"
        self._set_rollout(conn, row.id, state=ROLLED_BACK, reason=reason[:1024])
        _event(conn, row.id, CONTROLLER, "rolled_back", stage.idx, cells=cells)
        self._alert(
            conn,
            row.id,
            list(stage.cells),
            f"rollout {row.id} ({row.name}) of {row.candidate_version} stopped at stage {stage.name}: {broken}; "
            + (f"rolled back {', '.join(cells)}" if cells else "the live model was not changed (shadow stage)"),
        )
        report.events.append((row.id, "rolled_back"))

    def _abort(self, conn: Connection, row: Any, report: StepReport) -> None:
        stages = self._stages(conn, row.id)
        on_candidate = [c for s in stages if s.role == ROLE_LIVE and s.started_at is not None for c in s.cells]
        cells = self._rollback(conn, row.id, on_candidate)
        for s in stages:
            if s.state == WATCHING:
                self._set_stage(conn, row.id, s.idx, state=FAILED, finished_at=self.now())
        self._set_rollout(conn, row.id, state=ABORTED)
        _event(conn, row.id, CONTROLLER, "aborted", row.stage, cells=cells, requested_by=row.abort_requested_by)
        report.events.append((row.id, "aborted"))


# ---- reading ------------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def list_rollouts(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    r = models.Rollout.__table__
    rows = conn.execute(select(r).order_by(r.c.id.desc()).limit(limit)).all()
    return [
        {
            "id": row.id,
            "name": row.name,
            "candidate_version": row.candidate_version,
            "state": row.state,
            "stage": row.stage,
            "stages": len(row.plan.get("stages", [])),
            "created_at": _iso(row.created_at),
            "created_by": row.created_by,
            "updated_at": _iso(row.updated_at),
            "reason": row.reason,
        }
        for row in rows
    ]


def get_rollout(conn: Connection, rollout_id: int) -> dict[str, Any] | None:
    r, st, rb, ev = (
        models.Rollout.__table__,
        models.RolloutStage.__table__,
        models.RolloutRollback.__table__,
        models.RolloutEvent.__table__,
    )
    row = conn.execute(select(r).where(r.c.id == rollout_id)).first()
    if row is None:
        return None
    stages = conn.execute(select(st).where(st.c.rollout_id == rollout_id).order_by(st.c.idx)).all()
    rollbacks = conn.execute(select(rb).where(rb.c.rollout_id == rollout_id).order_by(rb.c.cell)).all()
    events = conn.execute(select(ev).where(ev.c.rollout_id == rollout_id).order_by(ev.c.id)).all()
    return {
        "id": row.id,
        "name": row.name,
        "candidate_version": row.candidate_version,
        "state": row.state,
        "stage": row.stage,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "updated_at": _iso(row.updated_at),
        "reason": row.reason,
        "abort_requested_by": row.abort_requested_by,
        "plan": row.plan,
        "stages": [
            {
                "idx": s.idx,
                "name": s.name,
                "role": s.role,
                "cells": s.cells,
                "min_parts": s.min_parts,
                "watch_s": s.watch_s,
                "state": s.state,
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
                "health": s.health,
            }
            for s in stages
        ],
        "rollbacks": [
            {
                "cell": b.cell,
                "from_version": b.from_version,
                "to_version": b.to_version,
                "published_at": _iso(b.published_at),
            }
            for b in rollbacks
        ],
        "events": [
            {"time": _iso(e.time), "actor": e.actor, "event": e.event, "stage": e.stage, "detail": e.detail}
            for e in events
        ],
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def shadow_summary(cand: dict, base: dict) -> str:
    """One line of a shadow stage's figures (the rollout status; the dashboard shows the same)."""

    def ms(v) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    return (
        f"{cand.get('parts', 0)} scored, agreement {_pct(cand.get('shadow_agreement'))} on "
        f"{cand.get('matched_parts', 0)} parts, skip share {_pct(cand.get('skip_share'))}, "
        f"latency p99 {ms(cand.get('latency_p99_ms'))} (live {ms(base.get('latency_p99_ms'))}), "
        f"{cand.get('labels', 0)} labelled: escape {_pct(cand.get('escape_rate'))} "
        f"(live {_pct(base.get('escape_rate'))}), "
        f"false reject {_pct(cand.get('false_reject_rate'))} (live {_pct(base.get('false_reject_rate'))})"
    )
