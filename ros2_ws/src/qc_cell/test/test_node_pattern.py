"""The node-test pattern later node tests copy: an isolated Context per test, parameter_overrides,
and start-up validation that fails fast with a clear message."""

from __future__ import annotations

import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from qc_cell.ros.params import ParameterError, declare
from qc_cell.testing.ros import ros_graph


class _Example(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("example", **kwargs)
        self.rate = declare(self, "rate_hz", 10.0, "capture rate", range=(0.1, 120.0))
        self.mode = declare(self, "mode", "free_run", "capture mode", choices=("free_run", "triggered"))


def test_parameter_overrides_reach_the_node():
    with ros_graph() as graph:
        node = graph.add(
            _Example(
                context=graph.context,
                parameter_overrides=[Parameter("rate_hz", value=30.0), Parameter("mode", value="triggered")],
            )
        )
        assert (node.rate, node.mode) == (30.0, "triggered")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (Parameter("rate_hz", value=500.0), "rate_hz"),
        (Parameter("mode", value="sometimes"), "must be one of"),
    ],
)
def test_bad_parameters_fail_fast_with_a_clear_message(override, expected):
    with ros_graph() as graph, pytest.raises(ParameterError, match=expected):
        _Example(context=graph.context, parameter_overrides=[override])


def test_contexts_are_isolated():
    with ros_graph() as first:
        first.node("only_in_first")
        with ros_graph() as second:
            names = second.node("probe").get_node_names()
    assert "only_in_first" not in names
