"""Actuator drivers behind one interface (base.py): sim, gpio, modbus (pulse outputs) and robot_arm."""

from qc_cell.reject.drivers.base import (
    ArmDriver,
    ArmJob,
    ArmOutcome,
    DriverError,
    DriverHealth,
    PulseDriver,
    RejectDriver,
)

__all__ = ["ArmDriver", "ArmJob", "ArmOutcome", "DriverError", "DriverHealth", "PulseDriver", "RejectDriver"]
