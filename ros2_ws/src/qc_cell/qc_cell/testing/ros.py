"""Node-test pattern: every test gets its own rclpy Context and executor, so tests cannot leak
nodes, parameters or callbacks into each other.

    with ros_graph() as graph:
        node = graph.add(DecisionNode(parameter_overrides=[Parameter("reinspect_threshold", value=0.4)]))
        probe = graph.add(rclpy.create_node("probe", context=graph.context))
        ...
        assert graph.spin_until(lambda: len(received) == 3, timeout=5.0), f"got {received}"
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import rclpy
from rclpy.context import Context
from rclpy.node import Node

from qc_cell.ros.node_main import make_executor


class Graph:
    def __init__(self, context: Context, threads: int) -> None:
        self.context = context
        # The executor a node gets from qc_cell.ros.node_main.run with the same thread count: test a node on its own
        # (a burst of 2,000 queued messages crawled at ~15 per second on 4 threads, 1,000 took seconds on one).
        # Default 1, as most nodes run; rclpy's 4-thread executor halved a 50 Hz stream under load.
        self.executor = make_executor(threads, context)
        self._nodes: list[Node] = []

    def add(self, node: Node) -> Node:
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def node(self, name: str, **kwargs) -> Node:
        """A plain helper node (probe/publisher) in this graph's context."""
        return self.add(rclpy.create_node(name, context=self.context, **kwargs))

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Spin until predicate() is true or timeout (s) passes; returns the predicate's last value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def close(self) -> None:
        for node in reversed(self._nodes):
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()


@contextmanager
def ros_graph(threads: int = 1) -> Iterator[Graph]:
    context = Context()
    rclpy.init(context=context)
    graph = Graph(context, threads)
    try:
        yield graph
    finally:
        graph.close()
        rclpy.try_shutdown(context=context)
