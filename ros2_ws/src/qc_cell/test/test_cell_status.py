"""The cell status core: diagnostics, alerts and the activator's waits in, change-only console lines out."""

from __future__ import annotations

from qc_cell.bringup.cell_status import CellStatus, StatusLine, shape
from qc_cell.healthcheck import ERROR, OK, STALE, WARN

NO_MODEL = "no model: every part is NOT_INSPECTED"


def _texts(lines: list[StatusLine]) -> list[str]:
    return [line.text for line in lines]


def test_an_error_is_said_at_once_and_not_again_while_it_stands():
    status = CellStatus()
    said = []
    for second in range(30):  # the node reports every second
        said += status.diagnostic("inference: model", ERROR, NO_MODEL, now=float(second))
        said += status.tick(now=second + 0.5)
    assert said == [StatusLine(ERROR, f"inference: model: ERROR {NO_MODEL}")]


def test_the_same_fault_with_other_numbers_is_no_change_but_another_fault_is():
    status = CellStatus()
    said = _texts(status.diagnostic("cloud_bridge: mqtt", ERROR, "not connected (refused); 3 stored", 0.0))
    said += _texts(status.diagnostic("cloud_bridge: mqtt", ERROR, "not connected (refused); 12 stored", 1.0))
    said += _texts(status.diagnostic("cloud_bridge: mqtt", ERROR, "2 records lost, outbox 95% full", 2.0))
    assert said == [
        "cloud_bridge: mqtt: ERROR not connected (refused); 3 stored",
        "cloud_bridge: mqtt: ERROR 2 records lost, outbox 95% full",
    ]
    assert shape("3 part(s) in 1.5 s") == shape("12 part(s) in 0.25 s")


def test_a_warning_is_said_only_once_it_lasts():
    status = CellStatus(warn_after_s=5.0)
    brief = status.diagnostic("camera_driver: camera", WARN, "inactive: not capturing", 0.0)
    brief += status.diagnostic("camera_driver: camera", OK, "capturing at 10.0 fps", 2.0)
    brief += status.tick(20.0)
    assert brief == [], "a warning gone within warn_after_s (a camera being configured) is not worth a line"

    lasting = status.diagnostic("cloud_bridge: mqtt", WARN, "not connected (Name or service not known)", 30.0)
    lasting += status.diagnostic("cloud_bridge: mqtt", WARN, "not connected (Name or service not known)", 34.0)
    assert lasting == []
    assert _texts(status.tick(35.0)) == ["cloud_bridge: mqtt: WARN not connected (Name or service not known)"]


def test_a_cleared_fault_is_said_once_it_stays_ok_so_a_flicker_is_one_line():
    status = CellStatus(clear_after_s=5.0)
    said = []
    for second in range(20):  # bad, good, bad, good ...: one fault, not one line per report
        if second % 2 == 0:
            said += status.diagnostic("decision: verdicts", ERROR, f"{second} part(s) without a result", second)
        else:
            said += status.diagnostic("decision: verdicts", OK, "deciding", float(second))
    for second in range(20, 30):
        said += status.diagnostic("decision: verdicts", OK, "deciding", float(second))
    assert said == [
        StatusLine(ERROR, "decision: verdicts: ERROR 0 part(s) without a result"),
        StatusLine(OK, "decision: verdicts: OK again (deciding)"),
    ]
    assert status.standing() == []


def test_stale_counts_as_an_error():
    status = CellStatus()
    lines = status.diagnostic("sensor_fusion: temperature", STALE, "stale: no valid sample", 0.0)
    assert lines == [StatusLine(ERROR, "sensor_fusion: temperature: STALE stale: no valid sample")]


def test_alerts_from_warn_up_are_said_and_repeats_counted_not_printed():
    status = CellStatus(alert_repeat_s=60.0)
    assert status.alert("inference", 0, "MODEL_SWAPPED", "serving v2", 0.0) == [], "INFO is not a fault"
    said = status.alert("reject_actuator", 3, "REJECT_DRIVER_FAULT", "PLC 127.0.0.1:502 refused", 0.0)
    for second in range(1, 60):
        said += status.alert("reject_actuator", 3, "REJECT_DRIVER_FAULT", "PLC 127.0.0.1:502 refused", float(second))
    said += status.alert("reject_actuator", 3, "REJECT_SKIPPED", "part cell-7 not removed", 30.0)
    said += status.alert("reject_actuator", 3, "REJECT_DRIVER_FAULT", "PLC 127.0.0.1:502 refused", 61.0)
    assert said == [
        StatusLine(ERROR, "alert from reject_actuator: CRITICAL REJECT_DRIVER_FAULT: PLC 127.0.0.1:502 refused"),
        StatusLine(ERROR, "alert from reject_actuator: CRITICAL REJECT_SKIPPED: part cell-7 not removed"),
        StatusLine(
            ERROR,
            "alert from reject_actuator: CRITICAL REJECT_DRIVER_FAULT: PLC 127.0.0.1:502 refused "
            "(59 more since the last one)",
        ),
    ]
    assert status.alert("cloud_bridge", 1, "OUTBOX_FULL", "dropped 3", 0.0)[0].level == WARN


def test_a_wait_is_said_once_it_lasts_then_each_change_and_its_end():
    status = CellStatus(wait_after_s=5.0)
    model = "inference to serve a model (camera_driver held back until then, at most 20 s)"
    quick = status.waiting("graph", "decision to join the graph", "", 0.0)
    quick += status.waiting("graph", None, "", 2.0)
    assert quick == [], "a normal start says nothing"

    said = status.waiting("ready", model, "loading models/default", 10.0)
    said += status.waiting("ready", model, "loading models/default", 11.0)
    said += status.tick(15.0)
    said += status.waiting("ready", model, "no model: models/default does not exist", 16.0)
    said += status.waiting("ready", model, "no model: models/default does not exist", 17.0)
    assert status.standing() == [f"waiting for {model}: no model: models/default does not exist"]
    said += status.waiting("ready", None, "", 30.0)
    assert said == [
        StatusLine(WARN, f"waiting for {model}: loading models/default"),
        StatusLine(WARN, f"waiting for {model}: no model: models/default does not exist"),
        StatusLine(OK, f"stopped waiting after 20 s for {model}"),
    ]


def test_no_parts_for_a_while_is_said_once_per_idle_spell_with_what_stands():
    status = CellStatus(idle_after_s=30.0)
    status.diagnostic("inference: model", ERROR, NO_MODEL, 0.0)
    said = []
    for second in range(0, 100):
        said += status.parts(0, float(second))
    assert _texts(said) == ["no part decided for 30 s; what stands:", f"  inference: model: ERROR {NO_MODEL}"]

    status.diagnostic("inference: model", OK, "serving v1", 100.0)
    status.tick(110.0)
    flowing = []
    for second in range(110, 200):
        flowing += status.parts(second - 109, float(second))  # one part a second
    assert flowing == []
    assert _texts(status.parts(90, 230.0)) == [
        "no part decided for 31 s; no node reports a fault and nothing is waited for"
    ]
