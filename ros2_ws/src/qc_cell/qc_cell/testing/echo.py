"""Echo node for the interface tests: for every qc_interfaces message type T it republishes what
arrives on echo_in/T to echo_out/T. Run as a separate process: `python -m qc_cell.testing.echo`."""

from __future__ import annotations

from rclpy.node import Node

import qc_interfaces.msg as qc_msg
from qc_cell.ros import qos
from qc_cell.ros.node_main import run


def message_types() -> dict[str, type]:
    return {
        name: cls
        for name, cls in vars(qc_msg).items()
        if isinstance(cls, type) and hasattr(cls, "get_fields_and_field_types") and not name.startswith("_")
    }


class Echo(Node):
    def __init__(self) -> None:
        super().__init__("echo")
        self._keep = []
        for name, cls in message_types().items():
            pub = self.create_publisher(cls, f"echo_out/{name}", qos.EVENTS)
            self._keep.append(self.create_subscription(cls, f"echo_in/{name}", pub.publish, qos.EVENTS))
        self.get_logger().info("echo ready")


def main() -> int:
    return run(Echo)


if __name__ == "__main__":
    raise SystemExit(main())
