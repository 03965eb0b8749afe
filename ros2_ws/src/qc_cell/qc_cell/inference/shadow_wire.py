"""How the shadow model's output rides on existing messages (shared by inference and cloud_bridge, no ROS):

- inspection/shadow (InspectionResult): model_version = the shadow version, backend = LIVE_PREFIX + the live
  model's version (the model that decided the part), defect_probability / inference_ms = the shadow's.
- model/shadow (ModelInfo): version = the shadow version ('' = none), message = format_state(counts, text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

LIVE_PREFIX = "live:"


def format_state(counts: Mapping[str, int], text: str) -> str:
    return json.dumps({"counts": dict(counts), "message": text[:512]}, sort_keys=True)


def parse_state(message: str) -> tuple[dict[str, int], str]:
    """model/shadow's message -> (counts, text); ({}, message) when it is not the JSON form."""
    try:
        data = json.loads(message)
        return {str(k): int(v) for k, v in dict(data.get("counts", {})).items()}, str(data.get("message", ""))
    except (ValueError, TypeError, AttributeError):
        return {}, message


def live_version(backend_field: str) -> str:
    return backend_field[len(LIVE_PREFIX) :] if backend_field.startswith(LIVE_PREFIX) else ""
