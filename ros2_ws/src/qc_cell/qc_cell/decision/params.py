"""The decision node's parameters (one spec: qc_cell.params_spec) and the DecisionConfig they make."""

from __future__ import annotations

from typing import Any

from qc_cell.decision.bands import BAND_SOURCES
from qc_cell.decision.engine import DecisionConfig
from qc_cell.decision.verdict_rule import EscalationPolicy, Thresholds
from qc_cell.params_spec import NodeParams, Param
from qc_contract.vocabulary import Verdict

ESCALATE_TO = {"reinspect": Verdict.REINSPECT, "defective": Verdict.DEFECTIVE}
NOT_INSPECTED_AS = {
    "not_inspected": Verdict.NOT_INSPECTED,
    "defective": Verdict.DEFECTIVE,
    "reinspect": Verdict.REINSPECT,
}

DECISION = NodeParams(
    "decision",
    "exactly one verdict per part (quality/decision), rolling KPIs (quality/kpi)",
    (
        Param(
            "reinspect_threshold",
            0.5,
            "p at and above which a part is re-inspected (below defective_threshold)",
            range=(0.0, 1.0),
            runtime=True,
        ),
        Param("defective_threshold", 0.8, "p at and above which a part is defective", range=(0.0, 1.0), runtime=True),
        Param(
            "bands",
            "params",
            "params: the two thresholds above; from_model: the bands the scoring model's package proposes "
            "(manifest decision_bands, fitted on validation by qc_cloud train; a threshold set at run time wins until "
            "bands is set again); a model without valid bands gets the thresholds",
            choices=BAND_SOURCES,
            runtime=True,
        ),
        Param("escalate_on_stale", True, "stale or missing process state at capture raises the verdict", runtime=True),
        Param("escalate_on_out_of_spec", True, "out-of-spec process at capture raises the verdict", runtime=True),
        Param(
            "escalate_on_anomaly", False, "anomalous (within spec) process at capture raises the verdict", runtime=True
        ),
        Param(
            "escalate_to",
            "reinspect",
            "lowest verdict after a process escalation",
            choices=tuple(ESCALATE_TO),
            runtime=True,
        ),
        Param(
            "not_inspected_as",
            "not_inspected",
            "verdict published for fail-safe parts (the reject actuator ejects not_inspected by default)",
            choices=tuple(NOT_INSPECTED_AS),
            runtime=True,
        ),
        Param(
            "result_deadline_ms",
            500.0,
            "capture stamp -> latest result; later the part is NOT_INSPECTED (keep below camera-to-ejector time)",
            range=(1.0, 60000.0),
            runtime=True,
        ),
        Param(
            "process_max_age_ms",
            1000.0,
            "a process state further than this from the capture time does not count (process_unknown)",
            range=(1.0, 60000.0),
            runtime=True,
        ),
        Param(
            "registration_wait_ms",
            20.0,
            "a result that overtook its camera/parts registration waits this long for it (for the encoder "
            "count); only while camera/parts has publishers, never past the deadline; 0 = decide at once",
            range=(0.0, 1000.0),
            runtime=True,
        ),
        Param(
            "process_keep_s",
            30.0,
            "process-state history kept for the join (must cover the deadline)",
            range=(1.0, 3600.0),
        ),
        Param(
            "remembered_parts",
            20000,
            "decided part ids remembered to recognise late and duplicate results",
            range=(100, 10_000_000),
        ),
        Param(
            "deadline_check_period_ms",
            10.0,
            "deadline timer period while parts are pending (adds at most this to a fail-safe verdict)",
            range=(1.0, 1000.0),
        ),
        Param("kpi_window_s", 60.0, "KPI rolling window", range=(1.0, 86400.0)),
        Param("kpi_period_s", 5.0, "quality/kpi publish period", range=(0.1, 3600.0)),
        Param("diagnostics_period_s", 1.0, "/diagnostics publish period", range=(0.1, 60.0)),
    ),
)


def build_config(values: dict[str, Any], process_keep_s: float, remembered_parts: int) -> DecisionConfig:
    """DecisionConfig from parameter values; ValueError with a clear message when they do not fit together."""
    for name, choices in (("escalate_to", ESCALATE_TO), ("not_inspected_as", NOT_INSPECTED_AS)):
        if values[name] not in choices:
            raise ValueError(f"{name} = {values[name]!r} must be one of {list(choices)}")
    return DecisionConfig(
        thresholds=Thresholds(values["reinspect_threshold"], values["defective_threshold"]),
        policy=EscalationPolicy(
            on_stale=values["escalate_on_stale"],
            on_out_of_spec=values["escalate_on_out_of_spec"],
            on_anomaly=values["escalate_on_anomaly"],
            escalate_to=ESCALATE_TO[values["escalate_to"]],
        ),
        not_inspected_as=NOT_INSPECTED_AS[values["not_inspected_as"]],
        result_deadline_ms=values["result_deadline_ms"],
        process_max_age_ms=values["process_max_age_ms"],
        registration_wait_ms=values["registration_wait_ms"],
        process_keep_s=process_keep_s,
        remembered_parts=remembered_parts,
    )
