"""Conversions between ROS time messages and integer nanoseconds (the core works in ns), and timers on ROS steady
time.

Every periodic callback of the cell runs on a STEADY_TIME clock (Humble's rclpy takes ``clock=`` in
``Node.create_timer``): a timer on the node's default (system, i.e. wall) clock stalls for as long as a backward
wall-clock step (NTP) when it is due next (ros2/rclpy#1490), so diagnostics, heartbeats and checks would stop.
"""

from collections.abc import Callable

from builtin_interfaces.msg import Time
from rclpy.callback_groups import CallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.timer import Timer

NS_PER_S = 1_000_000_000


def to_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def from_ns(ns: int) -> Time:
    return Time(sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))


def steady_clock() -> Clock:
    """A ROS clock on the host's steady (monotonic) time."""
    return Clock(clock_type=ClockType.STEADY_TIME)


def steady_timer(
    node: Node, period_s: float, callback: Callable[[], None], *, callback_group: CallbackGroup | None = None
) -> Timer:
    """node.create_timer on ROS steady time: a wall-clock step neither stalls nor hurries it."""
    return node.create_timer(period_s, callback, callback_group=callback_group, clock=steady_clock())
