"""The cell activator on a real graph: lifecycle nodes named as the cell's, the readiness signals published by a
probe. Order (reject actuator, then the camera once the model serves and every node has matched its inputs'
publishers), re-activation after a restart, refusals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

from qc_cell.bringup.activator import CellActivator
from qc_cell.cell_graph import node
from qc_cell.ros import diagnostics, qos
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import ModelInfo, ProcessState

NAMESPACE = "activator_test"


class _Managed(LifecycleNode):
    """Records when it was activated; `refuse` makes its configure fail."""

    def __init__(self, name: str, context, refuse: bool = False) -> None:
        super().__init__(name, namespace=NAMESPACE, context=context)
        self.refuse = refuse
        self.activated_at: list[float] = []
        self.create_subscription(ModelInfo, "model/active", lambda _: None, qos.LATCHED)  # "listening"
        _diagnose(self)

    def on_configure(self, state) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.FAILURE if self.refuse else TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.activated_at.append(time.monotonic())
        return super().on_activate(state)


def _diagnose(node: Node) -> None:
    """/diagnostics as a cell node publishes them (with its inputs_matched), every 0.2 s."""
    publisher = diagnostics.create_publisher(node)
    name = node.get_fully_qualified_name()
    node.create_timer(
        0.2, lambda: diagnostics.publish(node, publisher, [diagnostics.status(name, diagnostics.OK, "ok", {})])
    )


def _plain(graph, name: str, diagnose: bool = True):
    plain = graph.node(name, namespace=NAMESPACE)
    plain.create_subscription(ModelInfo, "model/active", lambda _: None, qos.LATCHED)
    if diagnose:
        _diagnose(plain)
    return plain


def _report_inputs(publisher, node_name: str, inputs: str) -> None:
    """A node's /diagnostics saying how many publishers its subscriptions matched (a starved node's lag, staged)."""
    values = {diagnostics.INPUTS_KEY: inputs}
    status = diagnostics.status(f"/{NAMESPACE}/{node_name}", diagnostics.OK, "ok", values)
    publisher.publish(DiagnosticArray(status=[status]))


@contextmanager
def _running(graph, activator: CellActivator) -> Iterator[None]:
    """The graph spins in one thread (service answers), the activator runs in another; the test waits."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            graph.executor.spin_once(timeout_sec=0.05)

    threads = [threading.Thread(target=spin, daemon=True), threading.Thread(target=activator.run, args=(stop,))]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10.0)


def _wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.02)
    return bool(predicate())


def test_camera_is_activated_last_once_the_model_serves_and_again_after_a_restart():
    with ros_graph() as graph:
        camera = graph.add(_Managed("camera_driver", graph.context))
        reject = graph.add(_Managed("reject_actuator", graph.context))
        _plain(graph, "inference")
        _plain(graph, "sensor_fusion", diagnose=False)  # its /diagnostics come from the probe
        graph.node("process_simulator", namespace=NAMESPACE)  # subscribes to nothing, like a free-running camera
        probe = graph.node("probe", namespace=NAMESPACE)
        model_pub = probe.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        process_pub = probe.create_publisher(ProcessState, "process/state", qos.LATCHED)
        diagnostics_pub = diagnostics.create_publisher(probe)
        events: list[tuple[str, str]] = []
        waits: list[tuple[str, str | None]] = []
        names = ("camera_driver", "inference", "sensor_fusion", "reject_actuator", "process_simulator")
        specs = [node(name) for name in names]
        activator = CellActivator(
            graph.node("manager", namespace=NAMESPACE),
            NAMESPACE,
            specs,
            lambda name, event, detail: events.append((name, event)),
            ready_timeout_s=30.0,
            poll_s=0.2,
            retry_s=0.5,
            on_waiting=lambda key, what, why: waits.append((key, what)),
        )
        with _running(graph, activator):
            assert _wait_until(lambda: reject.activated_at, timeout=20.0), events
            time.sleep(1.0)
            assert not camera.activated_at, "the camera must wait for the model and fresh process signals"
            held = "inference to serve a model (camera_driver held back until then, at most 30 s)"
            assert waits[-1] == ("ready", held), f"the wait is said while it lasts: {waits}"

            process_pub.publish(ProcessState(stale=False))
            model_pub.publish(ModelInfo(state=ModelInfo.STATE_ACTIVE, version="v1"))
            # sensor_fusion has not yet matched the model/active publisher the graph shows: the camera waits.
            inputs_wait = (
                "the nodes to match their inputs' publishers (camera_driver held back until then, at most 30 s)"
            )
            assert _wait_until(lambda: waits[-1] == ("ready", inputs_wait), timeout=10.0), waits
            for _ in range(5):
                _report_inputs(diagnostics_pub, "sensor_fusion", f"/{NAMESPACE}/model/active=0")
                time.sleep(0.2)
            assert not camera.activated_at, "the camera must wait until every node has matched its inputs"
            _report_inputs(diagnostics_pub, "sensor_fusion", f"/{NAMESPACE}/model/active=1")
            camera_active = ("camera_driver", "active")
            # Wait for the activator's own report, not for on_activate: the activator confirms the state after the
            # transition, and a cleanup before that (seen under load) is a node changed under it, rightly reported.
            assert _wait_until(lambda: camera_active in events, timeout=10.0), events
            assert camera.activated_at[0] > reject.activated_at[0]
            assert ("ready", None) in waits and ("graph", None) in waits, f"the waits ended: {waits}"

            # A respawned node comes back unconfigured: activated again, without waiting for readiness again.
            camera.trigger_deactivate()
            camera.trigger_cleanup()
            assert _wait_until(lambda: events.count(camera_active) == 2, timeout=10.0), events
        assert len(camera.activated_at) == 2 and ("reject_actuator", "active") in events
        assert not any(event in ("not_ready", "graph_incomplete", "error") for _, event in events), events


def test_a_refusing_node_is_reported_once_and_retried_while_the_parts_still_get_inspected():
    with ros_graph() as graph:
        camera = graph.add(_Managed("camera_driver", graph.context))
        reject = graph.add(_Managed("reject_actuator", graph.context, refuse=True))
        events: list[tuple[str, str, str]] = []
        activator = CellActivator(
            graph.node("manager", namespace=NAMESPACE),
            NAMESPACE,
            [node("camera_driver"), node("reject_actuator")],
            lambda *event: events.append(event),
            poll_s=0.1,
            retry_s=0.3,
        )
        with _running(graph, activator):
            assert _wait_until(lambda: camera.activated_at, timeout=20.0), events
            time.sleep(2.0)  # several retries of the refusing node
            refusals = [e for e in events if e[1] == "lifecycle_error" and "refused" in e[2]]
            assert [e[0] for e in refusals] == ["reject_actuator"], f"reported once, not on every retry: {events}"
            # Parts are inspected and recorded; the actuator reports each one it cannot eject while not active.
            assert camera.activated_at and not reject.activated_at

            reject.refuse = False  # e.g. the PLC came back: the next retry succeeds
            assert _wait_until(lambda: reject.activated_at, timeout=10.0), events
