"""The custom interfaces build, and every message type crosses a process boundary intact."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from rclpy.action import ActionClient, ActionServer
from rclpy.callback_groups import ReentrantCallbackGroup

from qc_cell.ros import qos
from qc_cell.ros.time import from_ns, to_ns
from qc_cell.testing.echo import message_types
from qc_cell.testing.ros import ros_graph
from qc_interfaces.action import RejectPart
from qc_interfaces.msg import PartFrame, QualityDecision
from qc_interfaces.srv import LoadModel

EXPECTED_TYPES = {
    "Alert",
    "CellKpi",
    "InspectionResult",
    "ModelInfo",
    "PartFrame",
    "PartTrigger",
    "ProcessState",
    "QualityDecision",
    "RejectEvent",
}


def _filled(cls: type, seed: int):
    """An instance of cls with every top-level field set to a non-default value derived from seed."""
    msg = cls()
    for field, kind in cls.get_fields_and_field_types().items():
        if field == "header":
            msg.header.frame_id = f"camera_{seed}"
            msg.header.stamp = from_ns(1_700_000_000_123_456_789 + seed)
        elif kind == "string":
            setattr(msg, field, f"{field}-{seed}")
        elif kind == "sequence<string>":
            setattr(msg, field, [f"{field}-a", f"{field}-b"])
        elif kind.startswith("sequence<uint32"):
            setattr(msg, field, [seed, seed + 1])
        elif kind == "boolean":
            setattr(msg, field, True)
        elif kind in ("float", "double"):
            setattr(msg, field, 0.25 + seed)
        elif kind.startswith(("uint", "int", "octet")):
            setattr(msg, field, 1 + seed % 3)
        elif kind == "builtin_interfaces/Time":
            setattr(msg, field, from_ns(42_000_000_007 + seed))
        elif kind == "sensor_msgs/Image":
            msg.image.height, msg.image.width, msg.image.encoding = 2, 3, "mono8"
            msg.image.step = 3
            msg.image.data = bytes(range(6))
    return msg


def test_all_interfaces_are_generated():
    assert set(message_types()) >= EXPECTED_TYPES, f"missing: {EXPECTED_TYPES - set(message_types())}"
    assert QualityDecision.NOT_INSPECTED == 3 and PartFrame.LABEL_DEFECT == 2


def test_time_conversion_round_trip():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_763_900_000_123_456_789):
        assert to_ns(from_ns(ns)) == ns


def test_every_message_type_between_two_processes():
    echo = subprocess.Popen([sys.executable, "-m", "qc_cell.testing.echo"], stderr=subprocess.PIPE, text=True)
    try:
        with ros_graph() as graph:
            probe = graph.node("probe")
            received: dict[str, object] = {}
            publishers = {}
            for i, (name, cls) in enumerate(sorted(message_types().items())):
                publishers[name] = (probe.create_publisher(cls, f"echo_in/{name}", qos.EVENTS), _filled(cls, i))
                probe.create_subscription(
                    cls, f"echo_out/{name}", lambda m, n=name: received.__setitem__(n, m), qos.EVENTS
                )

            # Publish until every type came back (discovery across processes takes a moment).
            def all_back() -> bool:
                for name, (pub, msg) in publishers.items():
                    if name not in received:
                        pub.publish(msg)
                return len(received) == len(publishers)

            assert graph.spin_until(all_back, timeout=30.0), f"not echoed: {set(publishers) - set(received)}"
            for name, (_, sent) in publishers.items():
                assert received[name] == sent, f"{name} changed in transit: {received[name]} != {sent}"
    finally:
        echo.terminate()
        _, err = echo.communicate(timeout=10)
    assert echo.returncode in (0, -15), f"echo process failed: {err}"


def test_load_model_service_and_reject_part_action():
    with ros_graph() as graph:
        server = graph.node("server")
        client_node = graph.node("client")
        group = ReentrantCallbackGroup()

        def load_model(request, response):
            response.success = request.version == "2.0.0"
            response.message = "loaded" if response.success else f"unexpected version {request.version}"
            response.active_version = request.version if response.success else "1.0.0"
            return response

        server.create_service(LoadModel, "inference/load_model", load_model, callback_group=group)

        def execute(goal_handle):
            for stage in ("moving", "picking", "placing"):
                goal_handle.publish_feedback(RejectPart.Feedback(stage=stage, progress=0.5))
            goal_handle.succeed()
            return RejectPart.Result(success=True, message=f"removed {goal_handle.request.part_id}")

        ActionServer(server, RejectPart, "reject_part", execute, callback_group=group)

        client = client_node.create_client(LoadModel, "inference/load_model")
        assert graph.spin_until(client.service_is_ready, 10.0), "LoadModel service never appeared"
        future = client.call_async(LoadModel.Request(path="/models/2.0.0", version="2.0.0", sha256="ab" * 32))
        assert graph.spin_until(future.done, 10.0), "LoadModel call did not complete"
        assert future.result().success and future.result().active_version == "2.0.0"

        action = ActionClient(client_node, RejectPart, "reject_part")
        assert graph.spin_until(action.server_is_ready, 10.0), "reject_part action server never appeared"
        feedback = []
        send = action.send_goal_async(
            RejectPart.Goal(part_id="cell1-000042", deadline=from_ns(10**18), position_m=1.25),
            feedback_callback=lambda fb: feedback.append(fb.feedback.stage),
        )
        assert graph.spin_until(send.done, 10.0) and send.result().accepted
        result = send.result().get_result_async()
        assert graph.spin_until(result.done, 10.0), "RejectPart result never arrived"
        assert result.result().result.success and "cell1-000042" in result.result().result.message
        assert graph.spin_until(lambda: len(feedback) == 3, 5.0), f"feedback stages: {feedback}"


@pytest.mark.parametrize("value", [float("nan"), 0.0, 1.0])
def test_nan_probability_survives_serialization(value):
    from rclpy.serialization import deserialize_message, serialize_message

    from qc_interfaces.msg import InspectionResult

    msg = InspectionResult(part_id="p", defect_probability=value)
    back = deserialize_message(serialize_message(msg), InspectionResult)
    assert (math.isnan(back.defect_probability) and math.isnan(value)) or back.defect_probability == value
