"""Bring a cell's lifecycle nodes to ACTIVE and keep them there, in the order a line needs.

1. Wait until every node of the cell is in the graph and its subscriptions are discovered (bounded).
2. Activate the lifecycle nodes that are not part sources (the reject actuator); one that refuses is reported and
   retried, and does not hold the cell back.
3. Wait (bounded) until the model serves and the process signals are fresh, so that the first parts are judged like
   every other: not NOT_INSPECTED for want of a model, nor escalated as process_unknown; and until every node (and
   the activator's own node) has matched the publishers the graph shows on the cell topics it subscribes
   (`inputs_matched` in its /diagnostics): a node seen in the graph may not have matched a writer yet (endpoint
   discovery in a starved process lags by seconds), and a part published before that is lost to it.
4. Activate the part sources (the camera driver): parts that entered earlier would miss their records.

Then poll every node's state: one that came back after a respawn (unconfigured) is activated again. Used in-process
by the cell runner and, under `ros2 launch`, by the cell_manager node (qc_cell.nodes.cell_manager).

What it waits for in steps 1-3 goes to `on_waiting(key, what, why)` (what=None: no longer), so the runner and the
cell_manager can say why no parts flow yet (qc_cell.bringup.cell_status).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State
from rclpy.node import Node

from qc_cell.bringup import params_file
from qc_cell.bringup.lifecycle_driver import LifecycleClient, LifecycleError
from qc_cell.cell_graph import NodeSpec
from qc_cell.healthcheck import owner
from qc_cell.ros import diagnostics, qos
from qc_interfaces.msg import ModelInfo, ProcessState

EventSink = Callable[[str, str, str], None]  # (node name, event, detail)
# (key, what the cell waits for or None when it no longer does, why so far or '')
WaitSink = Callable[[str, "str | None", str], None]
# Events that need an operator's attention (the others: "active").
WARNING_EVENTS = ("lifecycle_error", "graph_incomplete", "not_ready", "error")


class CellActivator:
    def __init__(
        self,
        node: Node,
        namespace: str,
        specs: Sequence[NodeSpec],
        on_event: EventSink,
        graph_timeout_s: float = 60.0,
        ready_timeout_s: float = 20.0,
        poll_s: float = 1.0,
        retry_s: float = 5.0,
        on_waiting: WaitSink = lambda key, what, why: None,
    ) -> None:
        """`node` must be spun by an executor in another thread (service answers arrive through it)."""
        self._node = node
        self._namespace = namespace.strip("/")
        self._specs = list(specs)
        self._on_event = on_event
        self._on_waiting = on_waiting
        self._graph_timeout_s = graph_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._clients = {
            spec.name: LifecycleClient(node, params_file.fully_qualified(self._namespace, spec.name))
            for spec in self._specs
            if spec.lifecycle
        }
        self._next_try: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._model_active = threading.Event()
        self._process_fresh = threading.Event()
        self._model_note = ""  # why no model serves yet, from model/active
        # Per node: its subscriptions' matched publishers by topic, from its latest /diagnostics that says.
        self._inputs: dict[str, dict[str, int]] = {}
        self._heard: set[str] = set()  # nodes whose /diagnostics came (a Humble node's never say inputs_matched)
        node.create_subscription(ModelInfo, "model/active", self._on_model, qos.LATCHED)
        node.create_subscription(ProcessState, "process/state", self._on_process, qos.LATCHED)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set. Never raises for a node that misbehaves: that is reported through on_event."""
        self._wait_for_graph(stop)
        sources = [spec.name for spec in self._specs if spec.lifecycle and spec.part_source]
        others = [spec.name for spec in self._specs if spec.lifecycle and not spec.part_source]
        sources_released = False
        while not stop.is_set():
            try:
                # Settled: active, or refused (reported). A cell whose ejector is down still inspects and records
                # every part; the reject actuator reports each part it cannot eject (SKIPPED) while it is not active.
                pending = [name for name in others if not self._keep_active(name) and name not in self._last_error]
                if pending and not sources_released:
                    self._on_waiting("activation", f"{', '.join(pending)} to become active{held(sources)}", "")
                if not pending and not sources_released:
                    self._on_waiting("activation", None, "")
                    self._wait_until_ready(stop, sources)
                    sources_released = True
                if sources_released:
                    for name in sources:
                        self._keep_active(name)
            except Exception as exc:  # the line keeps running: report, try again on the next poll
                if stop.is_set():
                    return  # the node went away under a call at shutdown
                self._on_event("activator", "error", repr(exc))
            stop.wait(self._poll_s)

    def _keep_active(self, name: str) -> bool:
        """True when the node is ACTIVE; otherwise try to get it there (at most every retry_s after a failure)."""
        client = self._clients[name]
        now = time.monotonic()
        if now < self._next_try.get(name, 0.0) or not client.ready():
            return False
        try:
            state = client.state().id
            if state != State.PRIMARY_STATE_ACTIVE:
                if state not in (State.PRIMARY_STATE_UNCONFIGURED, State.PRIMARY_STATE_INACTIVE):
                    return False  # in a transition (or finalized: the supervisor/launch respawns the process)
                client.activate()
                self._on_event(name, "active", client.fqn)
        except LifecycleError as exc:
            self._next_try[name] = now + self._retry_s
            if self._last_error.get(name) != str(exc):  # once per distinct reason, not every retry
                self._last_error[name] = str(exc)
                self._on_event(name, "lifecycle_error", str(exc))
            return False
        self._last_error.pop(name, None)
        return True

    def _wait_for_graph(self, stop: threading.Event, settle_s: float = 1.0) -> None:
        """Until every node of the cell is in the graph and their subscriptions have stopped changing for settle_s
        (endpoint discovery follows node discovery; some nodes, e.g. a free-running camera, subscribe to nothing)."""
        namespace = f"/{self._namespace}" if self._namespace else "/"
        expected = {spec.name for spec in self._specs}
        end = time.monotonic() + self._graph_timeout_s
        present: set[str] = set()
        seen, stable_since, settled = None, 0.0, False
        while not settled and time.monotonic() < end and not stop.is_set():
            present = {name for name, ns in self._node.get_node_names_and_namespaces() if ns == namespace}
            missing = sorted(expected - present)
            self._on_waiting(
                "graph",
                f"{', '.join(missing)} to join the graph" if missing else "the nodes' subscriptions to be discovered",
                "",
            )
            if expected <= present:
                subscriptions = {
                    name: sorted(
                        topic for topic, _ in self._node.get_subscriber_names_and_types_by_node(name, namespace)
                    )
                    for name in expected
                }
                if subscriptions != seen:
                    seen, stable_since = subscriptions, time.monotonic()
                elif time.monotonic() - stable_since >= settle_s:
                    settled = True
                    continue
            stop.wait(0.1)
        self._on_waiting("graph", None, "")
        if not settled and not stop.is_set():
            missing = sorted(expected - present)
            detail = f"{missing} not in the graph" if missing else "subscriptions still changing"
            self._on_event("activator", "graph_incomplete", f"{detail} after {self._graph_timeout_s:.0f}s")

    def _wait_until_ready(self, stop: threading.Event, sources: Sequence[str]) -> None:
        names = {spec.name for spec in self._specs}
        waits = {
            "model active": ("inference", self._model_active, "inference to serve a model"),
            "process fresh": ("sensor_fusion", self._process_fresh, "fresh process signals (process/state)"),
        }
        end = time.monotonic() + self._ready_timeout_s
        for what, (node, event, text) in waits.items():
            while node in names and not event.is_set() and time.monotonic() < end and not stop.is_set():
                note = self._model_note if node == "inference" else ""
                self._on_waiting("ready", f"{text}{held(sources, self._ready_timeout_s)}", note)
                event.wait(0.1)
            if node in names and not event.is_set() and not stop.is_set():
                self._on_event(
                    "activator", "not_ready", f"{what}: not within {self._ready_timeout_s:.0f}s; parts start"
                )
        self._wait_for_inputs(stop, end, sources)  # last, right before the release: earlier reports may be stale
        self._on_waiting("ready", None, "")

    def _wait_for_inputs(self, stop: threading.Event, end: float, sources: Sequence[str]) -> None:
        while not stop.is_set():
            unmatched = self._unmatched_inputs()
            if not unmatched:
                return
            if time.monotonic() >= end:
                detail = f"inputs not matched within {self._ready_timeout_s:.0f}s: {'; '.join(unmatched)}; parts start"
                self._on_event("activator", "not_ready", detail)
                return
            why = "; ".join(unmatched[:4]) + (f" and {len(unmatched) - 4} more" if len(unmatched) > 4 else "")
            text = f"the nodes to match their inputs' publishers{held(sources, self._ready_timeout_s)}"
            self._on_waiting("ready", text, why)
            stop.wait(0.1)

    def _unmatched_inputs(self) -> list[str]:
        """'node: topic matched/expected' for every subscription that has matched fewer publishers than the graph
        shows (the activator's own node too); 'node: no /diagnostics yet' for a node not heard from (simulators,
        which may publish none, excepted)."""
        ours = diagnostics.matched_inputs(self._node)
        reports = {**self._inputs, **({self._node.get_name(): ours} if ours is not None else {})}
        missing = [f"{s.name}: no /diagnostics yet" for s in self._specs if not (s.simulator or s.name in self._heard)]
        expected: dict[str, int] = {}
        for name, counts in reports.items():
            for topic, matched in counts.items():
                if topic not in expected:
                    expected[topic] = self._node.count_publishers(topic)
                if matched < expected[topic]:
                    missing.append(f"{name}: {topic} {matched}/{expected[topic]}")
        return missing

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        names = [spec.name for spec in self._specs]
        for status in msg.status:
            name = owner(status.name, self._namespace, names)
            if name is None:
                continue
            self._heard.add(name)
            for value in status.values:
                if value.key == diagnostics.INPUTS_KEY:
                    # A value that does not parse: the node is heard, its inputs are not waited for.
                    with contextlib.suppress(ValueError):
                        self._inputs[name] = diagnostics.parse_inputs(value.value)

    def _on_model(self, msg: ModelInfo) -> None:
        # A failed swap that names a version keeps the previous model serving.
        if msg.state == ModelInfo.STATE_ACTIVE or (msg.state == ModelInfo.STATE_FAILED and msg.version):
            self._model_active.set()
        elif msg.message:
            self._model_note = msg.message

    def _on_process(self, msg: ProcessState) -> None:
        if not msg.stale:
            self._process_fresh.set()


def held(sources: Sequence[str], at_most_s: float | None = None) -> str:
    """' (camera_driver held back until then, at most 20 s)': what a wait holds back, for its text."""
    if not sources:
        return ""
    limit = f", at most {at_most_s:.0f} s" if at_most_s is not None else ""
    return f" ({', '.join(sources)} held back until then{limit})"
