"""Every subscription of the cell's nodes is created here, watched for publishers with incompatible QoS.

A publisher whose QoS cannot match a subscription (best effort against a reliable reader, volatile against a
transient-local one, ...) is no error to DDS: the two simply never connect and its messages never arrive. rclpy
only logs a warning, so a user's own decision node publishing `quality/decision` volatile would see its verdicts
silently vanish before the cloud bridge. Here the middleware's "requested incompatible QoS" event of every
subscription becomes
- an ERROR alert (`QOS_INCOMPATIBLE`) naming the topic, the policy, what this subscription asks and, when the
  graph shows them, the publishers that offer something else;
- a `<node>: subscriptions` status on /diagnostics, ERROR while such a publisher is in the graph, OK again (once)
  when it is gone. Nodes without incompatibilities publish no such status.
The pairs meant to match are in qc_cell.ros.qos.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSCompatibility, QoSProfile, qos_check_compatible, qos_policy_name_from_kind
from rclpy.subscription import Subscription

from qc_cell.ros import diagnostics
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.time import steady_timer
from qc_interfaces.msg import Alert

try:  # rclpy from Iron on (Jazzy, Kilted)
    from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
except ImportError:  # Humble (rclpy 3.3): the same classes under their old module name
    from rclpy.qos_event import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks

ALERT_CODE = "QOS_INCOMPATIBLE"
# How often the graph is checked for the incompatible publishers while any are known.
RECHECK_PERIOD_S = 1.0
# An incompatibility is cleared only this long after its last event (the graph may show a publisher a moment after
# the middleware reported it), and only once the graph shows no incompatible publisher on the topic.
CLEAR_AFTER_S = 5.0
# QoS policy (as the event names it) -> QoSProfile attribute.
POLICY_ATTRIBUTES = {
    "DURABILITY": "durability",
    "RELIABILITY": "reliability",
    "DEADLINE": "deadline",
    "LIVELINESS": "liveliness",
    "LIVELINESS_LEASE_DURATION": "liveliness_lease_duration",
    "HISTORY": "history",
    "DEPTH": "depth",
    "LIFESPAN": "lifespan",
}


@dataclass
class Incompatibility:
    """Publishers on `topic` whose QoS does not match this node's subscription to it."""

    topic: str  # resolved name
    policy: str  # the last incompatible policy the middleware reported, e.g. DURABILITY
    publishers: list[str] = field(default_factory=list)  # as the graph last showed them: "<node> (<value>)"
    last_event_s: float = 0.0  # time.monotonic()


def policy_name(kind: int) -> str:
    """DURABILITY, RELIABILITY, ... of the event's last_policy_kind (an int or, on some rclpy, an int-like enum)."""
    try:
        return qos_policy_name_from_kind(int(kind))
    except (TypeError, ValueError):
        return f"policy {kind}"


def policy_value(profile: QoSProfile, policy: str) -> str:
    """What `profile` sets for `policy` (e.g. TRANSIENT_LOCAL), '' for a policy not in POLICY_ATTRIBUTES."""
    attribute = POLICY_ATTRIBUTES.get(policy)
    if attribute is None:
        return ""
    value: Any = getattr(profile, attribute, "")
    return str(getattr(value, "name", value))


class Subscriptions:
    """Creates a node's subscriptions; reports publishers with incompatible QoS (alert + diagnostic)."""

    def __init__(self, node: Node, alerts: AlertPublisher, diagnostics_publisher) -> None:
        """diagnostics_publisher: the node's /diagnostics publisher (qc_cell.ros.diagnostics.create_publisher)."""
        self._node = node
        self._alerts = alerts
        self._diag_pub = diagnostics_publisher
        self._profiles: dict[str, QoSProfile] = {}
        self._problems: dict[str, Incompatibility] = {}
        self._lock = threading.Lock()
        # Runs only while an incompatibility is known (reset by the event, cancelled when all are cleared).
        self._recheck = steady_timer(node, RECHECK_PERIOD_S, self._on_recheck)
        self._recheck.cancel()

    def create(
        self,
        msg_type: type,
        topic: str,
        callback: Callable[[Any], None],
        qos_profile: QoSProfile,
        *,
        callback_group: CallbackGroup | None = None,
    ) -> Subscription:
        """node.create_subscription with the incompatible-QoS event registered."""
        subscription: Subscription | None = None

        def on_incompatible(info: QoSRequestedIncompatibleQoSInfo) -> None:
            assert subscription is not None  # events are handled by the executor, after create_subscription returned
            self._on_incompatible(subscription.topic_name, qos_profile, info)

        subscription = self._node.create_subscription(
            msg_type,
            topic,
            callback,
            qos_profile,
            callback_group=callback_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=on_incompatible),
        )
        self._profiles[subscription.topic_name] = qos_profile
        return subscription

    @property
    def incompatibilities(self) -> list[Incompatibility]:
        with self._lock:
            return list(self._problems.values())

    def _on_incompatible(self, topic: str, profile: QoSProfile, info: QoSRequestedIncompatibleQoSInfo) -> None:
        policy = policy_name(info.last_policy_kind)
        publishers = self._incompatible_publishers(topic, profile)
        with self._lock:
            problem = self._problems.setdefault(topic, Incompatibility(topic, policy))
            problem.policy = policy
            problem.last_event_s = time.monotonic()
            problem.publishers = publishers or problem.publishers
        wanted = policy_value(profile, policy)
        text = (
            f"publisher with incompatible QoS on {topic} (policy {policy}"
            + (f": this subscription asks {wanted}" if wanted else "")
            + "): its messages never arrive here"
            + (f"; publisher(s): {', '.join(publishers)}" if publishers else "")
            + ". Each topic's QoS: docs/graph-contract.md"
        )
        # Logged here, not through the alert publisher: its log lines may be throttled, this one must show.
        self._node.get_logger().error(f"[{ALERT_CODE}] {text}")
        self._alerts.send(Alert.ERROR, ALERT_CODE, text)
        self._publish_status()
        self._recheck.reset()

    def _incompatible_publishers(self, topic: str, profile: QoSProfile) -> list[str]:
        """The publishers the graph shows on `topic` that cannot match `profile`: '<node> (<reason>)'."""
        found = []
        for info in self._node.get_publishers_info_by_topic(topic):
            compatibility, reason = qos_check_compatible(info.qos_profile, profile)
            if compatibility == QoSCompatibility.ERROR:
                node = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                reason = reason.strip().removeprefix("ERROR:").strip().rstrip(";").strip()
                found.append(f"{node} ({reason})" if reason else node)
        return found

    def _on_recheck(self) -> None:
        now = time.monotonic()
        cleared = []
        with self._lock:
            problems = list(self._problems.values())
        for problem in problems:
            publishers = self._incompatible_publishers(problem.topic, self._profiles[problem.topic])
            with self._lock:
                problem.publishers = publishers or problem.publishers
                if not publishers and now - problem.last_event_s >= CLEAR_AFTER_S:
                    del self._problems[problem.topic]
                    cleared.append(problem.topic)
        for topic in cleared:
            self._node.get_logger().info(f"{topic}: no publisher with incompatible QoS any more")
        self._publish_status()
        if not self.incompatibilities:
            self._recheck.cancel()

    def _publish_status(self) -> None:
        problems = self.incompatibilities
        name = f"{self._node.get_name()}: subscriptions"
        if problems:
            message = "publisher(s) with incompatible QoS, their messages never arrive: " + ", ".join(
                f"{p.topic} ({p.policy})" for p in problems
            )
            values = {p.topic: f"{p.policy}: {', '.join(p.publishers) or 'publisher unknown'}" for p in problems}
            status = diagnostics.status(name, diagnostics.ERROR, message, values)
        else:
            status = diagnostics.status(name, diagnostics.OK, "every publisher's QoS matches", {})
        diagnostics.publish(self._node, self._diag_pub, [status])
