"""arm_server: reference robot arm serving the `reject_part` action (demo and tests; a real arm's driver
serves the same action). Takes realistic time per part (approach, pick at the deadline, place), one part
at a time, and fails like a real gripper (failure_probability, force_failure). Motion model:
qc_cell.reject.arm_model."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node

from qc_cell.reject.arm_model import ArmPlan, ReferenceArm
from qc_cell.reject.params import ARM_SERVER, arm_spec
from qc_cell.ros import diagnostics
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.time import steady_timer, to_ns
from qc_interfaces.action import RejectPart

# Several threads: a pick runs in its action goal's execute callback while further goals and cancels arrive.
EXECUTOR_THREADS = 4


class ArmServer(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("arm_server", **kwargs)
        p = declare_parameters(self, ARM_SERVER)
        self._feedback_period_s = p["feedback_period_s"]
        try:
            self._arm = ReferenceArm(arm_spec(p), None if p["seed"] < 0 else p["seed"])
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self._busy = threading.Lock()  # one part at a time: further goals wait for the arm
        self._counts: Counter[str] = Counter()
        self._diag_pub = diagnostics.create_publisher(self)
        steady_timer(self, 1.0, self._publish_diagnostics)
        handle_parameter_changes(self, ARM_SERVER, self._apply_parameters)
        self._server = ActionServer(
            self,
            RejectPart,
            "reject_part",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )

    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        spec = dataclasses.replace(self._arm.spec, **changed)
        spec.validate()  # ValueError refuses the change
        self._arm.spec = spec  # a frozen value swapped atomically; a goal in progress keeps its plan

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _execute(self, goal_handle) -> RejectPart.Result:
        goal = goal_handle.request
        deadline = to_ns(goal.deadline)
        self._counts["goals"] += 1
        reason = self._arm.check_goal(goal.position_m, deadline, self._now_ns())
        if reason is None:
            # Wait for the arm only as long as this part could still be reached after the wait.
            spec = self._arm.spec
            wait_s = (deadline - self._now_ns()) / 1e9 - spec.approach_s - spec.pick_s
            if not self._busy.acquire(timeout=max(wait_s, 0.0)):
                reason = "the arm is busy with earlier parts: cannot reach this part by its deadline"
            else:
                try:
                    plan = self._arm.plan(deadline, self._now_ns())
                    if isinstance(plan, ArmPlan):
                        return self._move(goal_handle, plan)
                    reason = plan
                finally:
                    self._busy.release()
        return self._finish(goal_handle, False, reason, "aborted")

    def _move(self, goal_handle, plan: ArmPlan) -> RejectPart.Result:
        part = goal_handle.request.part_id
        start = self._now_ns()
        if not self._stage(goal_handle, "moving", start, plan.pick_start_ns):
            return self._finish(goal_handle, False, "cancelled while moving", "canceled")
        if not self._stage(goal_handle, "picking", plan.pick_start_ns, plan.pick_end_ns):
            return self._finish(goal_handle, False, "cancelled while picking", "canceled")
        failure = self._arm.pick_fails()
        if failure is not None:
            self.get_logger().warning(f"pick of part {part} failed: {failure}")
            return self._finish(goal_handle, False, f"pick failed: {failure}", "aborted")
        # The part is in the gripper: the first "placing" feedback is the pick time the client records.
        self._stage(goal_handle, "placing", plan.pick_end_ns, plan.place_end_ns, cancellable=False)
        return self._finish(goal_handle, True, f"part {part} picked and placed in the reject bin", "succeeded")

    def _stage(self, goal_handle, stage: str, start_ns: int, end_ns: int, cancellable: bool = True) -> bool:
        """Publish feedback until end_ns; False when the goal was cancelled."""
        feedback = RejectPart.Feedback(stage=stage)
        span = max(end_ns - start_ns, 1)
        while True:
            now = self._now_ns()
            feedback.progress = float(min(1.0, max(0.0, (now - start_ns) / span)))
            goal_handle.publish_feedback(feedback)
            if cancellable and goal_handle.is_cancel_requested:
                return False
            if now >= end_ns:
                return True
            time.sleep(min(self._feedback_period_s, (end_ns - now) / 1e9))

    def _finish(self, goal_handle, success: bool, message: str, status: str) -> RejectPart.Result:
        self._counts[status] += 1
        {"succeeded": goal_handle.succeed, "aborted": goal_handle.abort, "canceled": goal_handle.canceled}[status]()
        return RejectPart.Result(success=success, message=message)

    def _publish_diagnostics(self) -> None:
        spec = self._arm.spec
        values = dict(self._counts)
        values.update({"failure_probability": spec.failure_probability, "force_failure": spec.force_failure})
        level = diagnostics.WARN if spec.force_failure else diagnostics.OK
        message = "force_failure is set: every pick fails" if spec.force_failure else "reference arm ready"
        status = diagnostics.status(f"{self.get_name()}: arm", level, message, values, "reference_arm")
        diagnostics.publish(self, self._diag_pub, [status])


def main() -> int:
    return run(ArmServer, threads=EXECUTOR_THREADS)


if __name__ == "__main__":
    raise SystemExit(main())
