"""Bring up one quality-inspection cell: `ros2 launch qc_bringup inspection_cell.launch.py`.

The node list comes from qc_cell.cell_graph and the params file is interpreted by
qc_cell.bringup.params_file, exactly as the cell runner (python -m qc_cell.bringup.cell_runner) does on
machines without `ros2 launch`. Two cells side by side: launch twice with namespace:=cell1 / cell2.
"""

from __future__ import annotations

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from qc_cell.bringup import params_file
from qc_cell.bringup.cell_runner import FLAGS, enabled_nodes
from qc_cell.cell_graph import ENVIRONMENT

ARGUMENTS = {
    "namespace": ("", "cell namespace / cell id; one namespace per cell (e.g. cell1)"),
    "params_file": (
        os.path.join(get_package_share_directory("qc_bringup"), "params", "cell.yaml"),
        "params YAML keyed by node name (params/cell.yaml, jetson.yaml, demo.yaml)",
    ),
    "backend": ("", "inference backend override: auto, onnxruntime, tensorrt (empty = from the params file)"),
    "source": ("", "camera source override: v4l2, gstreamer, video, folder, synthetic (empty = from the params file)"),
    "log_level": ("info", "log level of every node: debug, info, warn, error, fatal"),
    **{flag: ("auto", f"{flag}: true/false; auto = run the node when the params file configures it") for flag in FLAGS},
}


def _flag(value: str) -> bool | None:
    return None if value == "auto" else value.lower() in ("1", "true", "yes", "on")


def _cell(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    namespace = cfg["namespace"].strip("/")
    params = params_file.apply_arguments(params_file.load(cfg["params_file"]), cfg)
    params_dir = tempfile.mkdtemp(prefix="qc_cell_params_")
    actions = []
    specs = enabled_nodes(params, {flag: _flag(cfg[flag]) for flag in FLAGS})
    for spec in specs:
        path = os.path.join(params_dir, f"{spec.name}.yaml")
        with open(path, "w") as f:
            f.write(params_file.node_params_yaml(namespace, spec.name, params.get(spec.name, {})))
        common = dict(
            package="qc_cell",
            executable=spec.executable,
            name=spec.name,
            namespace=namespace,
            parameters=[path],
            arguments=["--ros-args", "--log-level", cfg["log_level"]],
            respawn=spec.respawn,
            respawn_delay=2.0,
            output="screen",
            emulate_tty=True,
            additional_env={**ENVIRONMENT, "PYTHONUNBUFFERED": "1"},
        )
        actions.append(LifecycleNode(**common) if spec.lifecycle else Node(**common))
    # Activates the lifecycle nodes, the part source last once the model serves, and again after a respawn.
    actions.append(
        Node(
            package="qc_cell",
            executable="cell_manager",
            name="cell_manager",
            namespace=namespace,
            parameters=[{"nodes": [spec.name for spec in specs]}],
            arguments=["--ros-args", "--log-level", cfg["log_level"]],
            respawn=True,
            respawn_delay=2.0,
            output="screen",
            emulate_tty=True,
        )
    )
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()
        ]
        + [OpaqueFunction(function=_cell)]
    )
