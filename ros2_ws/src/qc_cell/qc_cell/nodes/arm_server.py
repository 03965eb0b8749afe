"""arm_server: reference robot arm serving the `reject_part` action (demo and tests; a real arm's driver
serves the same action). Takes realistic time per part (approach, pick at the deadline, place), one part
at a time, and fails like a real gripper (failure_probability, force_failure). Motion model:
qc_cell.reject.arm_model."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter

from qc_cell.reject.arm_model import ArmPlan, ArmSpec, ReferenceArm
from qc_cell.ros import diagnostics
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare
from qc_cell.ros.time import to_ns
from qc_interfaces.action import RejectPart

RUNTIME = ("approach_s", "pick_s", "place_s", "failure_probability", "force_failure")
# Several threads: a pick runs in its action goal's execute callback while further goals and cancels arrive.
EXECUTOR_THREADS = 4


class ArmServer(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("arm_server", **kwargs)
        d = ArmSpec()
        spec = ArmSpec(
            approach_s=declare(
                self, "approach_s", d.approach_s, "time to reach the pick point from home (s)", range=(0.0, 60.0)
            ),
            pick_s=declare(
                self, "pick_s", d.pick_s, "grip time; the pick completes at the deadline (s)", range=(0.0, 60.0)
            ),
            place_s=declare(self, "place_s", d.place_s, "place in the bin and return home (s)", range=(0.0, 60.0)),
            reach_min_m=declare(
                self,
                "reach_min_m",
                d.reach_min_m,
                "nearest pick point downstream of the camera (m)",
                range=(0.0, 100.0),
                read_only=True,
            ),
            reach_max_m=declare(
                self,
                "reach_max_m",
                d.reach_max_m,
                "farthest pick point downstream of the camera (m)",
                range=(0.0, 100.0),
                read_only=True,
            ),
            failure_probability=declare(
                self, "failure_probability", d.failure_probability, "probability that a pick fails", range=(0.0, 1.0)
            ),
            force_failure=declare(self, "force_failure", d.force_failure, "every pick fails (fault drills, tests)"),
        )
        seed = declare(
            self, "seed", -1, "random seed of the failures (-1 = random)", range=(-1, 2**31 - 1), read_only=True
        )
        self._feedback_period_s = declare(
            self, "feedback_period_s", 0.05, "feedback period while moving (s)", range=(0.01, 1.0), read_only=True
        )
        try:
            self._arm = ReferenceArm(spec, None if seed < 0 else seed)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self._busy = threading.Lock()  # one part at a time: further goals wait for the arm
        self._counts: Counter[str] = Counter()
        self._diag_pub = diagnostics.create_publisher(self)
        self.create_timer(1.0, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._server = ActionServer(
            self,
            RejectPart,
            "reject_part",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in RUNTIME}
        if not changes:
            return SetParametersResult(successful=True)
        spec = dataclasses.replace(self._arm.spec, **changes)
        try:
            spec.validate()
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._arm.spec = spec  # a frozen value swapped atomically; a goal in progress keeps its plan
        return SetParametersResult(successful=True)

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
