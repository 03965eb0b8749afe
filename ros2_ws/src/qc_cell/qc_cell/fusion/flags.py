"""Process-state flags, with the same values as qc_interfaces ProcessState.FLAG_* (the core must not import ROS;
a test checks the values match the messages). Alert severities are qc_contract.vocabulary.Severity."""

from __future__ import annotations

from enum import IntFlag


class ProcessFlag(IntFlag):
    TEMPERATURE_OUT_OF_SPEC = 1
    PRESSURE_OUT_OF_SPEC = 2
    VIBRATION_OUT_OF_SPEC = 4
    TEMPERATURE_STALE = 8
    PRESSURE_STALE = 16
    VIBRATION_STALE = 32
    VIBRATION_TREND = 64
    TEMPERATURE_ANOMALY = 128
    PRESSURE_ANOMALY = 256
    VIBRATION_ANOMALY = 512


SIGNALS: tuple[str, ...] = ("temperature", "pressure", "vibration")

OUT_OF_SPEC_FLAGS = (
    ProcessFlag.TEMPERATURE_OUT_OF_SPEC | ProcessFlag.PRESSURE_OUT_OF_SPEC | ProcessFlag.VIBRATION_OUT_OF_SPEC
)
STALE_FLAGS = ProcessFlag.TEMPERATURE_STALE | ProcessFlag.PRESSURE_STALE | ProcessFlag.VIBRATION_STALE
ANOMALY_FLAGS = ProcessFlag.TEMPERATURE_ANOMALY | ProcessFlag.PRESSURE_ANOMALY | ProcessFlag.VIBRATION_ANOMALY


def signal_flags(signal: str) -> tuple[ProcessFlag, ProcessFlag, ProcessFlag]:
    """(out_of_spec, stale, anomaly) flags of one signal."""
    upper = signal.upper()
    return ProcessFlag[f"{upper}_OUT_OF_SPEC"], ProcessFlag[f"{upper}_STALE"], ProcessFlag[f"{upper}_ANOMALY"]
