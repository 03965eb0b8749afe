"""The heartbeat the PLC interlocks on, and the stop-line on deactivation with parts in flight (plain pytest: the
cell-health rule, and the controller with the sim driver)."""

from __future__ import annotations

import time

import pytest

from qc_cell.reject.cell_health import CellHealth
from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.recording import RecordingSink
from qc_cell.reject.records import CRITICAL, DEFECTIVE, HEARTBEAT, STOP_LINE, Decision

S = 1_000_000_000
OK, WARN, ERROR = 0, 1, 2


def test_the_cell_is_ready_only_while_every_node_reports_fresh_healthy_and_active():
    health = CellHealth(["camera_driver", "inference"], stale_ns=3 * S)
    assert health.problems(0) == ["camera_driver: no status yet", "inference: no status yet"]
    health.on_status("camera_driver: camera", WARN, "inactive: not capturing", {"lifecycle_state": "inactive"}, 0)
    health.on_status("inference: model", ERROR, "no model", {}, 0)
    health.on_status("decision: verdicts", ERROR, "ignored: not a heartbeat node", {}, 0)
    assert health.problems(S) == ["camera_driver: inactive", "inference: no model"]
    health.on_status("camera_driver: camera", OK, "capturing", {"lifecycle_state": "active"}, S)
    health.on_status("inference: model", OK, "serving 1.0.0", {}, S)
    assert health.problems(2 * S) == []
    health.on_status("camera_driver: camera", OK, "capturing", {"lifecycle_state": "active"}, 5 * S)
    assert health.problems(5 * S) == ["inference: silent for 4.0 s"], "a dead node stops reporting"
    with pytest.raises(ValueError, match="stale time"):
        CellHealth(["x"], 0)


def _controller(**changes) -> tuple[RejectController, SimDriver, RecordingSink]:
    config = RejectConfig(
        reject_distance_mm=800.0, belt_speed_mm_s=1000.0, watchdog_timeout_s=0.0, missed_response="stop_line"
    )
    driver, sink = SimDriver(), RecordingSink()
    controller = RejectController(RejectConfig(**{**config.__dict__, **changes}), driver, sink)
    controller.open()
    controller.arm()
    return controller, driver, sink


def _beats(driver: SimDriver) -> list[bool]:
    return [e.on for e in driver.edges if e.channel == HEARTBEAT]


def _tick_for(controller: RejectController, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        controller.tick()
        time.sleep(0.005)


def test_the_heartbeat_toggles_only_while_the_whole_cell_is_ready():
    controller, driver, sink = _controller(heartbeat_period_ms=20.0)
    try:
        _tick_for(controller, 0.1)
        assert _beats(driver) == [], "no status from the cell yet: no heartbeat"
        controller.set_cell_problems([])
        _tick_for(controller, 0.2)
        beats = _beats(driver)
        assert 6 <= len(beats) <= 11 and beats[:4] == [True, False, True, False], beats
        assert sink.alerts[-1].code == "CELL_READY"
        controller.set_cell_problems(["inference: no model"])
        _tick_for(controller, 0.1)
        assert driver.state[HEARTBEAT] is False, "held off: the PLC's heartbeat timer runs out"
        stopped = len(_beats(driver))
        _tick_for(controller, 0.1)
        assert len(_beats(driver)) == stopped, "no toggle while not ready"
        alert = sink.alerts[-1]
        assert (alert.severity, alert.code) == (CRITICAL, "CELL_NOT_READY") and "inference: no model" in alert.message
        assert controller.not_ready() == ["inference: no model"]
        controller.set_cell_problems([])
        driver.set_faults(frozenset({"bin_full"}))  # the actuator's own readiness counts too
        _tick_for(controller, 0.1)
        assert controller.not_ready() == ["reject_actuator: reject bin full"] and driver.state[HEARTBEAT] is False
    finally:
        controller.close()


def test_deactivation_with_parts_in_flight_raises_the_stop_line_and_keeps_it_through_the_release():
    controller, driver, sink = _controller()
    controller.on_decision(Decision("far", DEFECTIVE, time.time_ns()))  # 800 ms to the ejector
    controller.disarm()
    assert driver.state[STOP_LINE] is True
    alert = next(a for a in sink.alerts if a.code == "REJECT_STOPPED_WITH_PARTS")
    assert alert.severity == CRITICAL and "1 part(s) in flight" in alert.message
    controller.close()
    assert driver.state[STOP_LINE] is True, "released hardware keeps the stop-line raised"
    idle, idle_driver, idle_sink = _controller()
    idle.close()
    assert idle_driver.state[STOP_LINE] is False and not [a for a in idle_sink.alerts if a.severity == CRITICAL]


def test_a_free_run_camera_outage_asks_for_the_stop_line():
    health = CellHealth(["camera_driver", "decision"], stale_ns=3 * S)
    ok = {"lifecycle_state": "active", "free_run": "True"}
    health.on_status("camera_driver: camera", 0, "capturing", ok, 0)
    assert health.stop_requests(S) == []
    health.on_status("camera_driver: camera", 2, "retrying", {**ok, "stop_line_request": "camera unavailable"}, 2 * S)
    assert health.stop_requests(2 * S) == ["camera_driver: camera unavailable"]
    health.on_status("camera_driver: camera", 0, "capturing", ok, 3 * S)
    assert health.stop_requests(3 * S) == []
    assert health.stop_requests(7 * S) == ["camera_driver: silent for 4.0 s in free-run mode"], "a dead camera too"
    triggered = CellHealth(["camera_driver"], stale_ns=3 * S)
    triggered.on_status("camera_driver: camera", 0, "ok", {"lifecycle_state": "active"}, 0)
    assert triggered.stop_requests(7 * S) == [], "triggered: every part still gets a record (NOT_INSPECTED)"


def test_the_cells_stop_request_holds_the_stop_line_with_a_critical_alert():
    controller, driver, sink = _controller()
    try:
        controller.set_cell_stop(["camera_driver: free-run camera unavailable: parts pass without a record"])
        assert sink.wait(lambda: driver.state[STOP_LINE])
        alert = next(a for a in sink.alerts if a.code == "CELL_STOP_REQUESTED")
        assert alert.severity == CRITICAL and "free-run camera unavailable" in alert.message
        controller.set_cell_stop([])
        assert sink.wait(lambda: not driver.state[STOP_LINE])
    finally:
        controller.close()
