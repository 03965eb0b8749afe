"""qc_cell.ros.lifecycle.DeviceNode: the state it reports is rclpy's state machine's (what `ros2 lifecycle get`
answers), and the device is released on every way out (cleanup, shutdown, error, failed configure, destroy)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from lifecycle_msgs.srv import GetState
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn

from qc_cell.ros.lifecycle import DeviceNode
from qc_cell.testing.ros import Graph, ros_graph

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class DeviceMissingError(Exception):
    pass


class LogFileNode(DeviceNode):
    """A device node whose device is a real file: acquire opens it, release closes it."""

    configure_errors = (DeviceMissingError,)

    def __init__(self, path: Path, graph: Graph, fail_with: Exception | None = None) -> None:
        self.device: IO[str] | None = None
        self.opened: list[IO[str]] = []
        self.path, self.fail_with, self.releases = path, fail_with, 0
        super().__init__("log_file", context=graph.context)

    def acquire(self) -> None:
        if not self.path.parent.is_dir():
            raise DeviceMissingError(f"no directory {self.path.parent}")
        self.device = self.path.open("a")
        self.opened.append(self.device)
        if self.fail_with is not None:
            raise self.fail_with

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.device is not None
        self.device.write(f"active (was {state.label})\n")
        return SUCCESS

    def release(self) -> None:
        self.releases += 1
        device, self.device = self.device, None
        if device is not None:
            device.close()


def test_state_is_the_state_machines_through_every_transition(tmp_path):
    with ros_graph() as graph:
        node = graph.add(LogFileNode(tmp_path / "device.log", graph))
        client = graph.node("lifecycle_cli").create_client(GetState, "log_file/get_state")
        assert client.wait_for_service(timeout_sec=5.0)

        def both() -> tuple[str, str]:
            """The node's own report, and what `ros2 lifecycle get` shows (the get_state service)."""
            future = client.call_async(GetState.Request())
            assert graph.spin_until(future.done, 5.0)
            return node.lifecycle_state, future.result().current_state.label

        seen = [both()]
        for transition in (node.trigger_configure, node.trigger_activate, node.trigger_deactivate):
            assert transition() == SUCCESS
            seen.append(both())
        assert node.device is not None and not node.device.closed
        assert node.trigger_cleanup() == SUCCESS
        seen.append(both())
        assert node.device is None and node.releases == 1
        assert node.trigger_shutdown() == SUCCESS
        seen.append(both())
    labels = ["unconfigured", "inactive", "active", "inactive", "unconfigured", "finalized"]
    assert seen == [(label, label) for label in labels]
    assert (tmp_path / "device.log").read_text() == "active (was inactive)\n"


def test_a_missing_device_fails_configure_and_a_later_try_succeeds(tmp_path):
    with ros_graph() as graph:
        node = graph.add(LogFileNode(tmp_path / "not_yet" / "device.log", graph))
        assert node.trigger_configure() == FAILURE
        assert (node.lifecycle_state, node.releases, node.device) == ("unconfigured", 1, None)
        (tmp_path / "not_yet").mkdir()
        assert node.trigger_configure() == SUCCESS
        assert node.lifecycle_state == "inactive" and node.device is not None


def test_an_unexpected_error_in_configure_releases_what_was_acquired_and_returns_to_unconfigured(tmp_path):
    with ros_graph() as graph:
        node = graph.add(LogFileNode(tmp_path / "device.log", graph, fail_with=RuntimeError("driver bug")))
        # rclpy turns the exception into ERROR and runs the ErrorProcessing transition (on_error).
        assert node.trigger_configure() == TransitionCallbackReturn.ERROR
        assert node.lifecycle_state == "unconfigured"
        assert len(node.opened) == 1 and node.opened[0].closed, "on_error released the file acquire() had opened"
        assert node.device is None


def test_destroying_the_node_releases_the_device_without_a_shutdown_transition(tmp_path):
    with ros_graph() as graph:
        node = LogFileNode(tmp_path / "device.log", graph)
        assert node.trigger_configure() == SUCCESS
        device = node.device
        node.destroy_node()
        assert device is not None and device.closed and node.device is None
