"""The robot_arm reject driver's link to the arm: a `reject_part` action client (qc_interfaces/action/RejectPart).

The driver itself (qc_cell.reject.drivers.robot_arm) holds the bookkeeping and is tested without ROS; this is its
ArmTransport. The arm, or the reference `arm_server`, serves the action.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.node import Node

from qc_cell.reject.drivers.base import ArmJob
from qc_cell.ros.time import from_ns
from qc_interfaces.action import RejectPart


class ArmGoal:
    """The handle of one sent goal: the action's goal handle once the arm accepted it, and a cancel that may come
    before that."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.cancel_requested = False


# A server seen this recently still counts as ready: the graph can report a present server as missing for a moment
# (seen on Humble under load: a part failed "not available" 10 ms after its server was ready, its neighbour's goal
# went through). A server really gone fails the goal sent to it by the driver's result timeout, reported.
READY_HOLD_S = 1.0


class ActionArmTransport:
    """The robot_arm driver's ArmTransport over the `reject_part` action (resolved in the node's namespace)."""

    def __init__(self, node: Node, clock: Callable[[], float] = time.monotonic) -> None:
        self._client: ActionClient | None = ActionClient(node, RejectPart, "reject_part")
        self._lock = threading.Lock()
        self._clock = clock
        self._seen_ready = -math.inf

    def ready(self) -> bool:
        if self._client is None:
            return False
        now = self._clock()
        if self._client.server_is_ready():
            self._seen_ready = now
            return True
        return now - self._seen_ready < READY_HOLD_S

    def send(
        self, job: ArmJob, on_feedback: Callable[[str, float], None], on_result: Callable[[bool, str], None]
    ) -> ArmGoal:
        assert self._client is not None, "send after close"
        goal = RejectPart.Goal(part_id=job.part_id, deadline=from_ns(job.deadline_ns), position_m=job.position_m)
        ref = ArmGoal()

        def result_done(future) -> None:
            try:
                wrapped = future.result()
            except Exception as exc:
                on_result(False, f"getting the result failed: {exc}")
                return
            if wrapped.status == GoalStatus.STATUS_SUCCEEDED and wrapped.result.success:
                on_result(True, wrapped.result.message)
            else:
                on_result(False, wrapped.result.message or f"the goal ended with status {wrapped.status}")

        def goal_done(future) -> None:
            try:
                handle = future.result()
            except Exception as exc:
                on_result(False, f"sending the goal failed: {exc}")
                return
            if not handle.accepted:
                on_result(False, "the arm rejected the goal")
                return
            with self._lock:
                ref.handle = handle
                cancel = ref.cancel_requested
            if cancel:
                handle.cancel_goal_async()
            handle.get_result_async().add_done_callback(result_done)

        self._client.send_goal_async(
            goal, feedback_callback=lambda msg: on_feedback(msg.feedback.stage, msg.feedback.progress)
        ).add_done_callback(goal_done)
        return ref

    def cancel(self, handle: ArmGoal) -> None:
        with self._lock:
            handle.cancel_requested = True
            goal = handle.handle
        if goal is not None:
            goal.cancel_goal_async()

    def close(self) -> None:
        """Idempotent: the robot_arm driver closes it on release, the node again after a failed configure."""
        client, self._client = self._client, None
        if client is not None:
            client.destroy()
