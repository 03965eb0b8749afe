"""The words edge and cloud share, defined once: verdicts, alert severities, reject outcomes and model states.

The values are those of the qc_interfaces message constants (QualityDecision.*, Alert.*, RejectEvent.OUTCOME_*,
ModelInfo.STATE_*); qc_cell's test_vocabulary checks that they stay equal. ROS messages carry the values, MQTT
records and logs carry the names (VERDICT_NAMES, ... map value -> name).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class Verdict(IntEnum):
    """QualityDecision.*. NORMAL < REINSPECT < DEFECTIVE is the severity order."""

    NORMAL = 0
    REINSPECT = 1
    DEFECTIVE = 2
    NOT_INSPECTED = 3  # no valid inspection in time: the fail-safe verdict


class Severity(IntEnum):
    """Alert.*."""

    INFO = 0
    WARN = 1
    ERROR = 2
    CRITICAL = 3  # the line must react


class RejectOutcome(IntEnum):
    """RejectEvent.OUTCOME_*."""

    DONE = 0
    LATE = 1
    FAILED = 2
    SKIPPED = 3
    UNCONFIRMED = 4  # actuated, but the confirmation sensor did not see the part leave: treat as not ejected
    MISSED = 5  # the actuator restarted while the part was in flight, and it has passed the ejector


class ModelState(IntEnum):
    """ModelInfo.STATE_*."""

    NONE = 0
    LOADING = 1
    ACTIVE = 2
    FAILED = 3


# What of a cell may be simulated (demo params files only); a record from such a cell names them in `simulated`.
SIMULATED_INPUTS = (
    "process_sensors",  # process_simulator instead of the line's sensors
    "robot_arm",  # the reference arm_server instead of a robot
    "ejector",  # the sim reject driver instead of a valve/pusher
    "camera",  # synthetic parts instead of a camera
)


def _names(kind: type[IntEnum]) -> Mapping[int, str]:
    return {int(member): member.name for member in kind}


VERDICT_NAMES = _names(Verdict)
SEVERITY_NAMES = _names(Severity)
OUTCOME_NAMES = _names(RejectOutcome)
MODEL_STATE_NAMES = _names(ModelState)


def name_of(names: Mapping[int, str], value: int) -> str:
    """The name of a message constant's value; UNKNOWN_<value> for a value outside the vocabulary."""
    return names.get(value, f"UNKNOWN_{value}")
