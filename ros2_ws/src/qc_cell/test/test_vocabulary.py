"""The shared vocabulary (qc_contract.vocabulary, ROS-free) says what the qc_interfaces messages say: the same
names with the same values, none missing on either side."""

from __future__ import annotations

from enum import IntEnum

import pytest

from qc_contract.vocabulary import (
    MODEL_STATE_NAMES,
    OUTCOME_NAMES,
    SEVERITY_NAMES,
    VERDICT_NAMES,
    ModelState,
    RejectOutcome,
    Severity,
    Verdict,
)
from qc_interfaces.msg import Alert, ModelInfo, QualityDecision, RejectEvent

# vocabulary enum, its name table, the message that defines the constants, their name prefix there
PAIRS = [
    (Verdict, VERDICT_NAMES, QualityDecision, ""),
    (Severity, SEVERITY_NAMES, Alert, ""),
    (RejectOutcome, OUTCOME_NAMES, RejectEvent, "OUTCOME_"),
    (ModelState, MODEL_STATE_NAMES, ModelInfo, "STATE_"),
]


def message_constants(message: type, prefix: str) -> dict[str, int]:
    """The constants the .msg file declares (rosidl_generator_py keeps them on the message's metaclass, the same
    on Humble and later), by name without the prefix."""
    meta = type(message)
    declared: dict[str, int] = getattr(meta, f"_{meta.__name__}__constants")
    return {name.removeprefix(prefix): getattr(message, name) for name in declared if name.startswith(prefix)}


@pytest.mark.parametrize(("kind", "names", "message", "prefix"), PAIRS, ids=[p[2].__name__ for p in PAIRS])
def test_vocabulary_matches_the_message_constants(kind: type[IntEnum], names, message: type, prefix: str):
    constants = message_constants(message, prefix)
    assert constants, f"{message.__name__} declares no {prefix}* constants"
    vocabulary = {member.name: member.value for member in kind}
    assert vocabulary == constants, f"{kind.__name__} {vocabulary} != {message.__name__} {constants}"
    assert names == {value: name for name, value in constants.items()}, f"name table of {kind.__name__}: {names}"
