"""Parameters of reject_actuator and arm_server (specs: qc_cell.params_spec) and the settings they make."""

from __future__ import annotations

from typing import Any

from qc_cell.params_spec import NodeParams, Param
from qc_cell.reject.arm_model import ArmSpec
from qc_cell.reject.belt import BELT_SOURCES
from qc_cell.reject.config import MISSED_RESPONSES, OVERLAP_POLICIES, SPEED_SOURCES, WATCHDOG_ACTIONS, RejectConfig
from qc_cell.reject.drivers.factory import (
    DRIVERS,
    SIGNAL_CHANNELS,
    SIGNAL_DRIVERS,
    DriverSettings,
    build_driver,
    build_signals,
)
from qc_cell.reject.drivers.gpio import PIN_MODES
from qc_cell.reject.drivers.modbus import KINDS, ModbusOutput
from qc_cell.reject.records import DIVERT, HEARTBEAT, REJECT, STOP_LINE
from qc_cell.reject.station import CONFIRM

_C = RejectConfig()
_S = DriverSettings()
GPIO_PINS = {REJECT: 12, DIVERT: -1, STOP_LINE: -1, HEARTBEAT: -1}  # default header pin per output (-1 = none)
MODBUS_ADDRESSES = {REJECT: 0, DIVERT: -1, STOP_LINE: -1, HEARTBEAT: -1}  # default 0-based address per output
# Nodes whose /diagnostics must be fresh and not at ERROR (lifecycle ones: active) for the heartbeat to toggle.
HEARTBEAT_NODES = ["camera_driver", "inference", "sensor_fusion", "decision"]
INPUT_MEANINGS = {  # station input -> what it says (qc_cell.reject.station)
    "confirm": "reject-confirmation sensor",
    "bin_full": "reject bin full (active = full)",
    "bin_present": "reject bin in place (active = present)",
    "air_ok": "air pressure sufficient (active = ok)",
    "belt_running": "the belt is running (active = running; belt_source running_input)",
}

REJECT_ACTUATOR = NodeParams(
    "reject_actuator",
    "verdicts to timed ejections (lifecycle node; driver sim, gpio, modbus or robot_arm)",
    (
        # Geometry and timing: runtime-changeable (validated together, applied on the next tick).
        Param(
            "reject_distance_mm",
            _C.reject_distance_mm,
            "camera optical axis -> reject actuator along the belt, mm (robot_arm: the pick point)",
            range=(1.0, 100_000.0),
            runtime=True,
        ),
        Param(
            "divert_distance_mm",
            _C.divert_distance_mm,
            "camera -> divert gate, mm; 0 = the cell has no divert lane",
            range=(0.0, 100_000.0),
            runtime=True,
        ),
        Param(
            "speed_source",
            _C.speed_source,
            "belt speed from 'parameter' (belt_speed_mm_s) or 'encoder' (encoder_count on camera/parts)",
            choices=SPEED_SOURCES,
        ),
        Param(
            "belt_speed_mm_s",
            _C.belt_speed_mm_s,
            "belt speed, mm/s; with speed_source encoder the fallback while the encoder is stale (0 = none)",
            range=(0.0, 20_000.0),
            runtime=True,
        ),
        Param(
            "encoder_ticks_per_mm", _C.encoder_ticks_per_mm, "encoder ticks per mm of belt travel", range=(1e-6, 1e6)
        ),
        Param(
            "encoder_window_s",
            _C.encoder_window_s,
            "encoder samples used for the speed estimate (s)",
            range=(0.05, 60.0),
        ),
        Param(
            "belt_source",
            _C.belt_source,
            "belt tracking: each part's pulse follows the belt from 'encoder' counts or a 'running_input' "
            "(gpio_belt_running_pin / modbus_belt_running_address / sim); 'none': planned once, on time",
            choices=BELT_SOURCES,
        ),
        Param(
            "belt_stale_ms",
            _C.belt_stale_ms,
            "belt_source encoder: no encoder sample this long = belt position unknown (pulses and stop-line held)",
            range=(1.0, 60_000.0),
        ),
        Param(
            "actuator_latency_ms",
            _C.actuator_latency_ms,
            "command -> stroke of the ejector (valve, mechanics, bus, PLC scan), ms",
            range=(0.0, 5000.0),
            runtime=True,
        ),
        Param(
            "pulse_width_ms",
            _C.pulse_width_ms,
            "ejector pulse length, ms (centred on the part)",
            range=(1.0, 10_000.0),
            runtime=True,
        ),
        Param(
            "late_tolerance_ms",
            _C.late_tolerance_ms,
            "a command this much after its planned time still hits the part, ms",
            range=(0.0, 5000.0),
            runtime=True,
        ),
        Param(
            "min_pulse_gap_ms",
            _C.min_pulse_gap_ms,
            "pulses closer than this on one output overlap (merged or flagged), ms",
            range=(0.0, 5000.0),
            runtime=True,
        ),
        Param(
            "overlap_policy",
            _C.overlap_policy,
            "overlapping pulses: 'merge' (output held over both parts) or 'flag' (later part FAILED)",
            choices=OVERLAP_POLICIES,
        ),
        Param("eject_verdicts", _C.eject_verdicts, "verdicts sent to the reject lane"),
        Param(
            "divert_verdicts",
            None,
            "verdicts sent to the divert lane (e.g. [REINSPECT]); unset = none",
            type="string_array",
        ),
        Param(
            "missed_response",
            _C.missed_response,
            "for a part that must go out but will not (late, fault): none, stop_line (pulse) or divert",
            choices=MISSED_RESPONSES,
        ),
        Param("stop_line_pulse_ms", _C.stop_line_pulse_ms, "stop-line output pulse length, ms", range=(1.0, 600_000.0)),
        Param(
            "watchdog_timeout_s",
            _C.watchdog_timeout_s,
            "a part on camera/parts with no verdict this long after its capture (steady clock) is handled fail-safe "
            "(0 = off), s",
            range=(0.0, 600.0),
        ),
        Param(
            "watchdog_action",
            _C.watchdog_action,
            "reject_all (eject parts without verdict), stop_line (also hold stop-line while no verdicts) or alert_only",
            choices=WATCHDOG_ACTIONS,
        ),
        Param(
            "confirm_window_ms",
            _C.confirm_window_ms,
            "reject-confirmation sensor: the part must be seen this long after the stroke, else UNCONFIRMED (0 = no"
            " sensor)",
            range=(0.0, 10_000.0),
        ),
        Param(
            "heartbeat_period_ms",
            _C.heartbeat_period_ms,
            "heartbeat output toggles this often while the whole cell is ready; the PLC times it out (0 = none)",
            range=(0.0, 60_000.0),
        ),
        Param("heartbeat_nodes", HEARTBEAT_NODES, "nodes that must report healthy on /diagnostics for the heartbeat"),
        Param(
            "heartbeat_stale_s",
            3.0,
            "a heartbeat node silent on /diagnostics this long makes the cell not ready (s)",
            range=(0.5, 600.0),
        ),
        Param(
            "reconcile_grace_ms",
            1000.0,
            "verdict/eject reconciler: a part that must leave the line (verdict in eject/divert lists, or no verdict) "
            "and has no terminal reject/event this long after its nominal arrival at its lane (belt_speed_mm_s) and "
            "confirmation window is reported (CRITICAL alert naming it, stop-line); 0 = no reconciler",
            range=(0.0, 600_000.0),
        ),
        Param(
            "journal_path",
            "",
            "durable journal of planned ejections (recovery after a restart; '' = none, no recovery)",
        ),
        # Driver.
        Param("driver", _S.driver, "actuator driver", choices=DRIVERS),
        Param(
            "sim_faults",
            "",
            "sim driver: station faults of a drill, comma-separated: jammed, bin_full, bin_absent, air_low, "
            "belt_stopped",
            runtime=True,
        ),
        *(
            Param(f"gpio_{channel}_pin", pin, f"GPIO header pin of the {channel} output (-1 = none)", range=(-1, 1000))
            for channel, pin in GPIO_PINS.items()
        ),
        *(
            Param(f"gpio_{name}_pin", -1, f"GPIO header input pin: {meaning} (-1 = none)", range=(-1, 1000))
            for name, meaning in INPUT_MEANINGS.items()
        ),
        Param("gpio_pin_mode", _S.gpio_pin_mode, "Jetson.GPIO pin numbering", choices=PIN_MODES),
        Param("gpio_active_high", _S.gpio_active_high, "true: output high = on"),
        Param("modbus_host", _S.modbus_host, "PLC IP address or host name"),
        Param("modbus_port", _S.modbus_port, "PLC Modbus/TCP port", range=(1, 65535)),
        Param("modbus_device_id", _S.modbus_device_id, "Modbus unit/device id", range=(0, 255)),
        Param("modbus_timeout_s", _S.modbus_timeout_s, "timeout of one Modbus request (s)", range=(0.01, 10.0)),
        Param("modbus_heartbeat_s", _S.modbus_heartbeat_s, "link check period between pulses (s)", range=(0.05, 60.0)),
        Param("modbus_output_kind", "coil", "PLC outputs are coils or holding registers", choices=KINDS),
        Param("modbus_on_value", 1, "register value for on (registers only)", range=(0, 65535)),
        Param("modbus_off_value", 0, "register value for off (registers only)", range=(0, 65535)),
        *(
            Param(
                f"modbus_{channel}_address",
                address,
                f"0-based Modbus address of the {channel} output (-1 = none)",
                range=(-1, 65535),
            )
            for channel, address in MODBUS_ADDRESSES.items()
        ),
        *(
            Param(
                f"modbus_{name}_address",
                -1,
                f"0-based Modbus discrete input: {meaning} (-1 = none)",
                range=(-1, 65535),
            )
            for name, meaning in INPUT_MEANINGS.items()
        ),
        Param(
            "modbus_encoder_address",
            _S.modbus_encoder_address,
            "0-based input register of the PLC's belt encoder counter (two registers, 32 bit, high word first; read "
            "every tick for belt_source encoder; -1 = none: the counts on camera/parts only)",
            range=(-1, 65534),
        ),
        # Line signals on a second, independent driver.
        Param(
            "signals_driver",
            _S.signals_driver,
            "driver of the stop-line and heartbeat outputs: '' = the actuator driver's own; 'gpio' (pins of this "
            "header), 'modbus' (a separate PLC/IO device) or 'sim': independent of the actuator's link, and the only "
            "way a robot_arm set-up gets them",
            choices=SIGNAL_DRIVERS,
        ),
        *(
            Param(
                f"signals_gpio_{channel}_pin",
                -1,
                f"signals_driver gpio: header pin of the {channel} output (-1 = none)",
                range=(-1, 1000),
            )
            for channel in SIGNAL_CHANNELS
        ),
        Param("signals_modbus_host", _S.signals_modbus_host, "signals_driver modbus: IP address or host name"),
        Param(
            "signals_modbus_port", _S.signals_modbus_port, "signals_driver modbus: Modbus/TCP port", range=(1, 65535)
        ),
        Param(
            "signals_modbus_device_id",
            _S.signals_modbus_device_id,
            "signals_driver modbus: unit/device id",
            range=(0, 255),
        ),
        *(
            Param(
                f"signals_modbus_{channel}_address",
                -1,
                f"signals_driver modbus: 0-based address of the {channel} output (-1 = none; modbus_output_kind)",
                range=(-1, 65535),
            )
            for channel in SIGNAL_CHANNELS
        ),
        Param(
            "arm_result_timeout_s",
            _S.arm_result_timeout_s,
            "robot_arm: a goal without result this long after its deadline is cancelled and FAILED (s)",
            range=(0.1, 600.0),
        ),
        # Node: all read-only (a change would not reach the timers or the marker publisher).
        Param("marker_frame", "conveyor", "RViz frame of reject/markers: x along the belt, origin under the camera"),
        Param("marker_lifetime_s", 5.0, "how long RViz shows each reject marker (s)", range=(0.1, 600.0)),
        Param(
            "scheduler_spin_ms",
            2.0,
            "the scheduler busy-waits this long before each deadline (precision vs. CPU)",
            range=(0.0, 20.0),
        ),
        Param(
            "scheduler_rt_priority",
            50,
            "SCHED_FIFO priority of the actuation thread (0 = normal scheduling); needs CAP_SYS_NICE or an rtprio "
            "limit, falls back to normal scheduling with a warning",
            range=(0, 99),
        ),
        Param("tick_period_s", 0.05, "watchdog and driver-health period (s)", range=(0.01, 1.0)),
        Param("diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0)),
    ),
)


def reject_config(values: dict[str, Any]) -> RejectConfig:
    """RejectConfig from the parameter values (not validated: RejectConfig.validate)."""
    fields = {name: values[name] for name in RejectConfig.__dataclass_fields__}
    fields["eject_verdicts"] = tuple(values["eject_verdicts"] or ())
    fields["divert_verdicts"] = tuple(values["divert_verdicts"] or ())
    return RejectConfig(**fields)


def driver_settings(values: dict[str, Any]) -> DriverSettings:
    """DriverSettings from the parameter values (not validated: DriverSettings.validate)."""
    pins = {channel: values[f"gpio_{channel}_pin"] for channel in GPIO_PINS}
    addresses = {channel: values[f"modbus_{channel}_address"] for channel in MODBUS_ADDRESSES}
    kind, on_value, off_value = values["modbus_output_kind"], values["modbus_on_value"], values["modbus_off_value"]
    return DriverSettings(
        driver=values["driver"],
        gpio_pins={channel: pin for channel, pin in pins.items() if pin >= 0},
        gpio_pin_mode=values["gpio_pin_mode"],
        gpio_active_high=values["gpio_active_high"],
        modbus_host=values["modbus_host"],
        modbus_port=values["modbus_port"],
        modbus_device_id=values["modbus_device_id"],
        modbus_timeout_s=values["modbus_timeout_s"],
        modbus_heartbeat_s=values["modbus_heartbeat_s"],
        modbus_outputs={
            channel: ModbusOutput(kind, address, on_value, off_value)
            for channel, address in addresses.items()
            if address >= 0
        },
        arm_result_timeout_s=values["arm_result_timeout_s"],
        gpio_inputs={n: values[f"gpio_{n}_pin"] for n in INPUT_MEANINGS if values[f"gpio_{n}_pin"] >= 0},
        modbus_inputs={n: values[f"modbus_{n}_address"] for n in INPUT_MEANINGS if values[f"modbus_{n}_address"] >= 0},
        modbus_encoder_address=values["modbus_encoder_address"],
        signals_driver=values["signals_driver"],
        signals_gpio_pins={
            c: values[f"signals_gpio_{c}_pin"] for c in SIGNAL_CHANNELS if values[f"signals_gpio_{c}_pin"] >= 0
        },
        signals_modbus_host=values["signals_modbus_host"],
        signals_modbus_port=values["signals_modbus_port"],
        signals_modbus_device_id=values["signals_modbus_device_id"],
        signals_modbus_outputs={
            c: ModbusOutput(kind, values[f"signals_modbus_{c}_address"], on_value, off_value)
            for c in SIGNAL_CHANNELS
            if values[f"signals_modbus_{c}_address"] >= 0
        },
    )


_A = ArmSpec()
ARM_SERVER = NodeParams(
    "arm_server",
    "reference robot arm serving the reject_part action (demo and tests)",
    (
        Param(
            "approach_s", _A.approach_s, "time to reach the pick point from home (s)", range=(0.0, 60.0), runtime=True
        ),
        Param(
            "pick_s", _A.pick_s, "grip time; the pick completes at the deadline (s)", range=(0.0, 60.0), runtime=True
        ),
        Param("place_s", _A.place_s, "place in the bin and return home (s)", range=(0.0, 60.0), runtime=True),
        Param("reach_min_m", _A.reach_min_m, "nearest pick point downstream of the camera (m)", range=(0.0, 100.0)),
        Param("reach_max_m", _A.reach_max_m, "farthest pick point downstream of the camera (m)", range=(0.0, 100.0)),
        Param(
            "failure_probability",
            _A.failure_probability,
            "probability that a pick fails",
            range=(0.0, 1.0),
            runtime=True,
        ),
        Param("force_failure", _A.force_failure, "every pick fails (fault drills, tests)", runtime=True),
        Param("seed", -1, "random seed of the failures (-1 = random)", range=(-1, 2**31 - 1)),
        Param("feedback_period_s", 0.05, "feedback period while moving (s)", range=(0.01, 1.0)),
    ),
)


def arm_spec(values: dict[str, Any]) -> ArmSpec:
    """ArmSpec from the parameter values (not validated: ArmSpec.validate)."""
    return ArmSpec(**{name: values[name] for name in ArmSpec.__dataclass_fields__})


def checked_settings(values: dict[str, Any]) -> tuple[RejectConfig, DriverSettings]:
    """The actuator's config and driver settings, validated together (ValueError says what does not fit)."""
    config, settings = reject_config(values), driver_settings(values)
    config.validate()
    settings.validate()
    driver = None if settings.driver == "robot_arm" else build_driver(settings)
    channels = frozenset({REJECT}) if driver is None else driver.channels
    signals = build_signals(settings)
    if signals is not None:
        channels |= signals.channels
    if config.confirm_window_ms > 0 and (driver is None or CONFIRM not in driver.inputs):
        raise ValueError(
            f"confirm_window_ms {config.confirm_window_ms:g} needs a reject-confirmation input, which driver "
            f"'{settings.driver}' does not have as configured (set confirm_window_ms 0 without a sensor)"
        )
    if config.belt_source != "none" and driver is None:
        raise ValueError(
            f"belt_source {config.belt_source!r} with driver robot_arm: the arm gets one deadline per part; let its "
            "own conveyor tracking follow the belt (belt_source none)"
        )
    if config.belt_source == "running_input" and driver is not None and "running_input" not in driver.belt_inputs:
        raise ValueError(
            f"belt_source running_input needs a belt-running input, which driver '{settings.driver}' does not have "
            "as configured (gpio_belt_running_pin / modbus_belt_running_address)"
        )
    missing = config.required_channels() - channels
    if missing:
        raise ValueError(
            f"driver '{settings.driver}' has no output for {sorted(missing)}: set gpio_<channel>_pin / "
            "modbus_<channel>_address (stop-line, heartbeat: or a signals_driver), or change divert_verdicts / "
            "missed_response / watchdog_action"
        )
    return config, settings
