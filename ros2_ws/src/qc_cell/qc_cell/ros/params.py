"""Parameter declaration with descriptors, ranges and fail-fast validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node


class ParameterError(ValueError):
    """A parameter value is invalid; raised at start-up so the node fails fast with this message."""


def declare(
    node: Node,
    name: str,
    default: Any,
    description: str,
    *,
    read_only: bool = False,
    range: tuple[float, float] | None = None,
    choices: Sequence[str] | None = None,
) -> Any:
    """Declare a parameter with a full descriptor and return its value, validated against range/choices.

    Descriptor ranges are enforced by rclpy for runtime changes too; choices are checked here at start-up
    (and should be re-checked in the node's on-set callback if the parameter is not read_only).
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if choices:
        descriptor.additional_constraints = "one of: " + ", ".join(choices)
    if range is not None:
        lo, hi = range
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise TypeError(f"range given for non-numeric parameter {name}")
        if isinstance(default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    try:
        value = node.declare_parameter(name, default, descriptor).value
    except Exception as exc:  # rclpy raises InvalidParameterValueException and type errors here
        raise ParameterError(f"parameter '{name}': {exc}") from exc
    if range is not None and not (range[0] <= value <= range[1]):
        raise ParameterError(f"parameter '{name}' = {value!r} is outside [{range[0]}, {range[1]}]: {description}")
    if choices and value not in choices:
        raise ParameterError(f"parameter '{name}' = {value!r} must be one of {list(choices)}: {description}")
    return value
