"""A service served from its own small node and thread, for callbacks that take long (a model load: seconds).

The owning node can then spin on a SingleThreadedExecutor and still never wait for the slow callback. That matters:
rclpy's MultiThreadedExecutor scans every callback it has submitted on each wake-up: with it the inference node
used 62 % of a core at 30 parts/s of 1280x720, with the single-threaded executor 37 %, and the cell's
capture-to-verdict p50 went from 37.6 to 17.6 ms (bench/bench_cell.py, same run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class ServiceThread:
    def __init__(self, owner: Node, srv_type, srv_name: str, callback: Callable, node_suffix: str) -> None:
        """Serves `srv_name` (resolved in the owner's namespace, as if the owner served it) from a node named
        `<owner>_<node_suffix>` in the owner's context."""
        # Without the process's global arguments: `-r __node:=inference` (launch, runner) would rename this node too.
        self._node = rclpy.create_node(
            f"{owner.get_name()}_{node_suffix}",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self._node.create_service(srv_type, srv_name, callback)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{node_suffix}-service", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while not self._stop.is_set() and self._executor.context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except Exception:
            if not self._stop.is_set() and self._executor.context.ok():
                raise
            # the context was shut down under the spin (Ctrl-C): ending anyway

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops serving; a callback still running (a load) is given timeout_s to finish."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._executor.shutdown(timeout_sec=0.0)
        self._node.destroy_node()
