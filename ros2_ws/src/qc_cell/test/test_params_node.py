"""qc_cell.ros.params on a real node: descriptors from the spec, and runtime changes checked against the spec before
the node's own hook sees them."""

from __future__ import annotations

from typing import Any

from rclpy.node import Node
from rclpy.parameter import Parameter

from qc_cell.params_spec import NodeParams, Param
from qc_cell.ros.params import declare_parameters, handle_parameter_changes
from qc_cell.testing.ros import ros_graph

SPEC = NodeParams(
    "spec_example",
    "a node with runtime and read-only parameters",
    (
        Param("low", 1.0, "lower bound (below high)", range=(0.0, 10.0), runtime=True),
        Param("high", 5.0, "upper bound", range=(0.0, 10.0), runtime=True),
        Param("mode", "a", "operating mode", choices=("a", "b"), runtime=True),
        Param("period_s", 1.0, "timer period, set once", range=(0.1, 60.0)),
    ),
)


class _SpecNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("spec_example", **kwargs)
        self.values = declare_parameters(self, SPEC)
        self.applied: list[dict[str, Any]] = []
        handle_parameter_changes(self, SPEC, self._apply)

    def _apply(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        if values["low"] >= values["high"]:
            raise ValueError("low must be below high")
        self.applied.append(changed)


def test_descriptors_carry_the_spec():
    with ros_graph() as graph:
        node = graph.add(_SpecNode(context=graph.context))
        low, mode, period = node.describe_parameters(["low", "mode", "period_s"])
        assert (low.description, low.read_only) == ("lower bound (below high)", False)
        assert (low.floating_point_range[0].from_value, low.floating_point_range[0].to_value) == (0.0, 10.0)
        assert mode.additional_constraints == "one of: a, b"
        assert period.read_only


def test_runtime_changes_pass_the_spec_then_the_hook():
    with ros_graph() as graph:
        node = graph.add(_SpecNode(context=graph.context))
        [bad_choice] = node.set_parameters([Parameter("mode", value="c")])
        assert not bad_choice.successful and "must be one of ['a', 'b']" in bad_choice.reason
        [crossed] = node.set_parameters([Parameter("low", value=7.0)])
        assert not crossed.successful and crossed.reason == "low must be below high"
        [read_only] = node.set_parameters([Parameter("period_s", value=2.0)])
        assert not read_only.successful
        assert node.applied == [], "nothing refused reached the node"
        assert (node.get_parameter("mode").value, node.get_parameter("low").value) == ("a", 1.0)

        # Both bounds at once: checked together against each other, applied as one change.
        result = node.set_parameters_atomically([Parameter("high", value=9.0), Parameter("low", value=7.0)])
        assert result.successful, result.reason
        assert node.applied == [{"high": 9.0, "low": 7.0}]
