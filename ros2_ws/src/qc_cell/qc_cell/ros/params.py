"""Declare a node's parameters from its spec (qc_cell.params_spec) and validate runtime changes against it.

    values = declare_parameters(self, DECISION)                   # in the constructor (on_configure if lifecycle)
    ...
    handle_parameter_changes(self, DECISION, self._apply_parameters)  # once the node can apply changes

Every parameter gets a ParameterDescriptor with its description, range, read_only (all but the spec's runtime
ones) and choices (additional_constraints). Start-up values are checked against the spec and fail fast with a
ParameterError. Runtime changes go through the node's one on-set callback (Humble's rclpy has no pre/post-set
callbacks): the spec's type/range/choices first, then the node's hook, which gets the runtime values as they would
be after the change and either raises ValueError (refused, with that reason) or applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from qc_cell.params_spec import NodeParams, Param

# values: every runtime parameter of the spec with the change applied; changed: only the parameters being set.
ApplyChanges = Callable[[dict[str, Any], dict[str, Any]], None]

ROS_TYPES = {
    "bool": Parameter.Type.BOOL,
    "int": Parameter.Type.INTEGER,
    "double": Parameter.Type.DOUBLE,
    "string": Parameter.Type.STRING,
    "bool_array": Parameter.Type.BOOL_ARRAY,
    "int_array": Parameter.Type.INTEGER_ARRAY,
    "double_array": Parameter.Type.DOUBLE_ARRAY,
    "string_array": Parameter.Type.STRING_ARRAY,
}


class ParameterError(ValueError):
    """A parameter value is invalid; raised at start-up so the node fails fast with this message."""


def descriptor(param: Param) -> ParameterDescriptor:
    """The ROS descriptor of a spec parameter (what `ros2 param describe` shows)."""
    result = ParameterDescriptor(description=param.description, read_only=param.read_only)
    if param.choices:
        result.additional_constraints = "one of: " + ", ".join(param.choices)
    if param.range is not None:
        lo, hi = param.range
        if param.type == "int":
            result.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            result.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return result


def declare_parameters(node: Node, spec: NodeParams) -> dict[str, Any]:
    """Declare every parameter of spec on node; return the values (None for an unset parameter without default),
    checked against the spec. ParameterError names the parameter and says what is wrong."""
    values: dict[str, Any] = {}
    for param in spec:
        default = ROS_TYPES[param.type] if param.default is None else _ros_value(param.default)
        try:
            value = node.declare_parameter(param.name, default, descriptor(param)).value
        except Exception as exc:  # rclpy raises InvalidParameterValueException and type errors here
            raise ParameterError(f"parameter '{param.name}': {exc}") from exc
        if value is not None:
            try:
                param.check(value)
            except ValueError as exc:
                raise ParameterError(str(exc)) from exc
        values[param.name] = value
    return values


def handle_parameter_changes(node: Node, spec: NodeParams, apply: ApplyChanges | None = None) -> None:
    """Register the node's on-set callback: changes to spec parameters are checked against the spec, then given to
    apply (see ApplyChanges); a ValueError from apply refuses the whole change with its message."""
    runtime = spec.runtime_names

    def on_set(parameters: list[Parameter]) -> SetParametersResult:
        changed = {p.name: p.value for p in parameters if p.name in spec}
        if not changed:
            return SetParametersResult(successful=True)
        try:
            for name, value in changed.items():
                if spec[name].read_only:
                    raise ValueError(f"parameter '{name}' is read-only")
                spec[name].check(value)
            if apply is not None:
                apply({name: node.get_parameter(name).value for name in runtime} | changed, changed)
        except ValueError as exc:
            node.get_logger().warning(f"refused parameter change {changed}: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        node.get_logger().info(f"parameters changed: {changed}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)


def _ros_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
