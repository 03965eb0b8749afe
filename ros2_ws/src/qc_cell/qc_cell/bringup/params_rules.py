"""Rules between the parameters of different nodes, which no single node can check: applied to a cell's merged
params at load time (qc_cell.bringup.params_file.load), each broken one a one-line ParamsFileError.

- The visual bands are configured once, in the decision node: inference's overlay colours are derived from them.
- The model store is configured once, in inference: the cloud_bridge installs verified updates into the same one.
- inference.deadline_ms stays within decision.result_deadline_ms (a later inference result only counts as late).
- decision.result_deadline_ms stays below the camera-to-ejector travel time (else no verdict reaches the ejector).
- reject_actuator.watchdog_timeout_s exceeds decision.result_deadline_ms (else the watchdog ejects parts whose
  verdict is still on time; docs/reject.md).
- reject_actuator.watchdog_timeout_s stays below the camera-to-ejector travel time (else the fail-safe ejection of a
  part without verdict comes after the part has passed).
- reject_actuator.speed_source encoder needs encoder counts on camera/parts: a free-running camera has none (they
  come with each camera/trigger of triggered mode), so the cell would always time parts with the fallback speed.
- With offload on, cloud_bridge.offload_slack_ms leaves the actuator's latency before the part reaches the ejector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ParamsFileError(ValueError):
    """The params file is missing, not YAML, not shaped as node -> ros__parameters -> values, names an unknown
    node or parameter, or breaks a rule between nodes."""


# Parameter -> the parameter it is derived from (configured once, there).
DERIVED: dict[tuple[str, str], tuple[str, str]] = {
    ("inference", "overlay_reinspect_threshold"): ("decision", "reinspect_threshold"),
    ("inference", "overlay_defective_threshold"): ("decision", "defective_threshold"),
    ("cloud_bridge", "model_store_dir"): ("inference", "model_store_dir"),
}


def derive(params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Derived parameters filled in from their source; one set explicitly to another value is an error."""
    result = {node: dict(values) for node, values in params.items()}
    for (node, name), (source_node, source_name) in DERIVED.items():
        if node not in result or source_name not in result.get(source_node, {}):
            continue
        source = result[source_node][source_name]
        if name in result[node] and result[node][name] != source:
            raise ParamsFileError(
                f"{node}.{name} ({result[node][name]}) differs from {source_node}.{source_name} ({source}): "
                f"it is derived from it; configure it once, in {source_node}"
            )
        result[node][name] = source
    return result


def _travel_ms(reject: Mapping[str, Any]) -> float | None:
    """Camera -> ejector travel time at the configured belt speed (ms); None when no speed is configured."""
    speed, distance = reject.get("belt_speed_mm_s", 0.0), reject.get("reject_distance_mm")
    if not speed or distance is None:
        return None
    return distance / speed * 1000.0


def check(params: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ParamsFileError naming the first broken rule between nodes (rules of absent nodes are skipped)."""
    inference, decision = params.get("inference", {}), params.get("decision", {})
    reject, bridge = params.get("reject_actuator", {}), params.get("cloud_bridge", {})
    result_deadline = decision.get("result_deadline_ms")
    if result_deadline is not None and "deadline_ms" in inference:
        deadline = inference["deadline_ms"]
        if not 0 < deadline <= result_deadline:
            shown = "0 (none)" if deadline == 0 else f"{deadline:g}"
            raise ParamsFileError(
                f"inference.deadline_ms {shown} must be above 0 and at most decision.result_deadline_ms "
                f"{result_deadline:g}: a later inference result only counts as late"
            )
    travel = _travel_ms(reject) if reject else None
    if result_deadline is not None and travel is not None and not result_deadline < travel:
        raise ParamsFileError(
            f"decision.result_deadline_ms {result_deadline:g} must stay below the camera-to-ejector travel time "
            f"{travel:g} ms (reject_actuator.reject_distance_mm / belt_speed_mm_s)"
        )
    watchdog_s = reject.get("watchdog_timeout_s", 0.0)
    if result_deadline is not None and watchdog_s and not watchdog_s * 1000.0 > result_deadline:
        raise ParamsFileError(
            f"reject_actuator.watchdog_timeout_s {watchdog_s:g} must exceed decision.result_deadline_ms "
            f"{result_deadline:g} ms, else the watchdog ejects parts whose verdict is still on time"
        )
    if travel is not None and watchdog_s and not watchdog_s * 1000.0 < travel:
        raise ParamsFileError(
            f"reject_actuator.watchdog_timeout_s {watchdog_s:g} must stay below the camera-to-ejector travel time "
            f"{travel:g} ms, else a part without verdict has passed the ejector before the watchdog ejects it"
        )
    camera = params.get("camera_driver", {})
    if reject.get("speed_source") == "encoder" and camera.get("mode") == "free_run":
        raise ParamsFileError(
            "reject_actuator.speed_source encoder needs the encoder count of each part, which only camera/trigger "
            "carries: camera_driver.mode free_run has none; use mode triggered (part sensor with the encoder "
            "count) or speed_source parameter"
        )
    if bridge.get("offload_enabled") and travel is not None:
        latest = travel - reject.get("actuator_latency_ms", 0.0)
        slack = bridge.get("offload_slack_ms", 0.0)
        if not slack <= latest:
            raise ParamsFileError(
                f"cloud_bridge.offload_slack_ms {slack:g} must leave the actuator its latency: at most the travel "
                f"time {travel:g} ms minus reject_actuator.actuator_latency_ms ({latest:g} ms)"
            )
