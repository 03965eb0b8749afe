"""Motion and failure model of the reference robot arm (served by qc_cell.nodes.arm_server).

One part at a time: approach the pick point (approach_s), wait for the part, pick it so that the pick
completes at the goal's deadline (pick_s), then place it in the reject bin and return (place_s). A goal
whose pick point is out of reach is rejected; one whose deadline cannot be met after the approach is
aborted; a pick fails with failure_probability (or always, with force_failure), like a real gripper.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NS_PER_S = 1_000_000_000
STAGES = ("moving", "picking", "placing")


@dataclass(frozen=True)
class ArmSpec:
    approach_s: float = 0.35
    pick_s: float = 0.15
    place_s: float = 0.6
    reach_min_m: float = 0.2
    reach_max_m: float = 2.0
    failure_probability: float = 0.0
    force_failure: bool = False

    def validate(self) -> None:
        for name in ("approach_s", "pick_s", "place_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.reach_min_m < self.reach_max_m:
            raise ValueError(
                f"reach must satisfy 0 <= reach_min_m < reach_max_m: {self.reach_min_m}, {self.reach_max_m}"
            )
        if not 0.0 <= self.failure_probability <= 1.0:
            raise ValueError(f"failure_probability must be in [0, 1], got {self.failure_probability}")


@dataclass(frozen=True)
class ArmPlan:
    approach_end_ns: int
    pick_start_ns: int
    pick_end_ns: int  # = the deadline
    place_end_ns: int


class ReferenceArm:
    def __init__(self, spec: ArmSpec, seed: int | None = None) -> None:
        spec.validate()
        self.spec = spec
        self._rng = random.Random(seed)

    def check_goal(self, position_m: float, deadline_ns: int, now_ns: int) -> str | None:
        """Reason to reject the goal outright, or None."""
        if not self.spec.reach_min_m <= position_m <= self.spec.reach_max_m:
            return (
                f"pick point {position_m:.3f} m is outside the arm's reach "
                f"[{self.spec.reach_min_m}, {self.spec.reach_max_m}] m"
            )
        if deadline_ns <= now_ns:
            return f"deadline already passed {(now_ns - deadline_ns) / 1e6:.1f} ms ago"
        return None

    def plan(self, deadline_ns: int, now_ns: int) -> ArmPlan | str:
        """The motion for a goal started now, or why the deadline cannot be met."""
        spec = self.spec
        approach_end = now_ns + round(spec.approach_s * NS_PER_S)
        pick_start = deadline_ns - round(spec.pick_s * NS_PER_S)
        if approach_end > pick_start:
            short_ms = (approach_end - pick_start) / 1e6
            return f"cannot reach the pick point in time: {short_ms:.0f} ms short of the deadline"
        return ArmPlan(approach_end, pick_start, deadline_ns, deadline_ns + round(spec.place_s * NS_PER_S))

    def pick_fails(self) -> str | None:
        """Draw whether this pick fails; the failure message, or None."""
        if self.spec.force_failure:
            return "gripper fault (force_failure is set)"
        if self._rng.random() < self.spec.failure_probability:
            return f"part slipped from the gripper (simulated, failure_probability {self.spec.failure_probability})"
        return None
