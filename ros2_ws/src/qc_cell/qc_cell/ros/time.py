"""Conversions between ROS time messages and integer nanoseconds (the core works in ns)."""

from builtin_interfaces.msg import Time

NS_PER_S = 1_000_000_000


def to_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def from_ns(ns: int) -> Time:
    return Time(sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))
