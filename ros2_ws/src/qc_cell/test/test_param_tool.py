"""python -m qc_cell.tools.param (ros2 param without ros2cli) against a real running decision node."""

from __future__ import annotations

import subprocess
import sys

from qc_cell.nodes.decision import DecisionNode
from qc_cell.testing.ros import Graph, ros_graph


def tool(graph: Graph, *args: str) -> subprocess.CompletedProcess:
    """Run the tool as a user would, spinning the node's graph meanwhile so it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "qc_cell.tools.param", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert graph.spin_until(lambda: process.poll() is not None, 30.0), f"the tool did not finish: {args}"
    out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_list_get_set_describe_a_running_node_in_a_namespace():
    with ros_graph() as graph:
        node = graph.add(DecisionNode(context=graph.context, namespace="cell7"))

        listed = tool(graph, "list", "/cell7/decision")
        assert listed.returncode == 0, listed.stderr
        assert {"reinspect_threshold", "result_deadline_ms", "kpi_window_s"} <= set(listed.stdout.split())

        changed = tool(graph, "set", "/cell7/decision", "reinspect_threshold", "0.3")
        assert changed.returncode == 0, changed.stderr
        assert node._engine.config.thresholds.reinspect == 0.3, "the change reached the decision rule"
        got = tool(graph, "get", "decision", "reinspect_threshold", "--namespace", "cell7")
        assert (got.returncode, got.stdout.strip()) == (0, "0.3")

        # An integer for a double parameter is taken as the double, as a user means it.
        assert tool(graph, "set", "/cell7/decision", "defective_threshold", "1").returncode == 0
        assert node._engine.config.thresholds.defective == 1.0

        described = tool(graph, "describe", "/cell7/decision", "escalate_to")
        assert described.returncode == 0, described.stderr
        assert "Type: string" in described.stdout and "one of: reinspect, defective" in described.stdout


def test_refused_changes_exit_1_with_the_reason_and_change_nothing():
    with ros_graph() as graph:
        node = graph.add(DecisionNode(context=graph.context))
        out_of_range = tool(graph, "set", "/decision", "reinspect_threshold", "1.5")
        assert out_of_range.returncode == 1 and "refused" in out_of_range.stderr
        past_the_other = tool(graph, "set", "/decision", "reinspect_threshold", "0.9")  # above defective 0.8
        assert past_the_other.returncode == 1 and "reinspect_threshold < defective_threshold" in past_the_other.stderr
        read_only = tool(graph, "set", "/decision", "kpi_window_s", "5.0")
        assert read_only.returncode == 1 and "read-only" in read_only.stderr
        wrong_type = tool(graph, "set", "/decision", "escalate_on_stale", "maybe")
        assert wrong_type.returncode == 1 and "bool" in wrong_type.stderr
        assert node._engine.config.thresholds.reinspect == 0.5 and node.get_parameter("kpi_window_s").value == 60.0


def test_unknown_nodes_parameters_and_usage_exit_2():
    with ros_graph() as graph:
        graph.add(DecisionNode(context=graph.context))
        missing = tool(graph, "get", "/no_such_node", "x", "--timeout", "1")
        assert missing.returncode == 2 and "/no_such_node is not running" in missing.stderr
        unknown = tool(graph, "get", "/decision", "no_such_parameter")
        assert unknown.returncode == 2 and "no parameter 'no_such_parameter'" in unknown.stderr
        assert tool(graph, "set", "/decision", "reinspect_threshold").returncode == 2  # no value
