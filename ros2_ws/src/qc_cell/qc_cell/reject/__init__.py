"""Reject actuator core (no rclpy): conveyor timing model, pulse planning, a precise deadline scheduler,
the decision watchdog, the drivers (sim, gpio, modbus, robot_arm) and the controller that ties them together.

The node `qc_cell.nodes.reject_actuator` only converts messages and parameters to and from these types.
"""
