"""Bring up one quality-inspection cell: `ros2 launch qc_bringup inspection_cell.launch.py`.

The node list comes from qc_cell.cell_graph and the params file (a base, or an overlay of one) is interpreted by
qc_cell.bringup.params_file, exactly as the cell runner (python -m qc_cell.bringup.cell_runner) does on
machines without `ros2 launch`. Two cells side by side: launch twice with namespace:=cell1 / cell2.

The per-node params files, and the run's state folder when the params file puts state under $(var state_dir),
go to this launch's log folder (~/.ros/log/<launch>/qc_cell/), beside its logs: nothing is left in the temp folder.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import launch_config
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from qc_cell.bringup import params_file
from qc_cell.bringup.cell_runner import FLAGS, enabled_nodes, flag_help
from qc_cell.cell_graph import cell_environment, enclave_arguments

ARGUMENTS = {
    "namespace": ("", "cell namespace / cell id; one namespace per cell (e.g. cell1)"),
    "params_file": (
        os.path.join(get_package_share_directory("qc_bringup"), "params", "cell.yaml"),
        "params YAML keyed by node name (params/cell.yaml, jetson.yaml, demo.yaml)",
    ),
    "backend": ("", "inference backend override: auto, onnxruntime, tensorrt (empty = from the params file)"),
    "source": ("", "camera source override: v4l2, gstreamer, video, folder, synthetic (empty = from the params file)"),
    "log_level": ("info", "log level of every node: debug, info, warn, error, fatal"),
    "state_dir": (
        "",
        "the run's state folder, $(var state_dir) in the params file (model store, outbox, part counter); "
        "empty = a new folder in this launch's log folder",
    ),
    **{flag: ("auto", flag_help(flag)) for flag in FLAGS},
}


def _flags(cfg: dict[str, str]) -> dict[str, bool | None]:
    flags = {}
    for flag in FLAGS:
        try:
            flags[flag] = params_file.parse_flag(cfg[flag])
        except ValueError as exc:
            raise params_file.ParamsFileError(f"launch argument {flag}: {exc}") from None
    return flags


def _cell(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    namespace = cfg["namespace"].strip("/")
    flags = _flags(cfg)
    params = params_file.load(cfg["params_file"], params_file.argument_overrides(cfg))
    run_dir = os.path.join(launch_config.log_dir, "qc_cell", namespace or "root")
    if params_file.uses_state_dir(params):
        state_dir = os.path.abspath(cfg["state_dir"] or os.path.join(run_dir, "state"))
        os.makedirs(state_dir, exist_ok=True)
        params = params_file.with_state_dir(params, state_dir)
    elif cfg["state_dir"]:
        raise params_file.ParamsFileError(
            f"state_dir: {cfg['params_file']} puts no state under {params_file.STATE_DIR} (its paths say where)"
        )
    params_dir = os.path.join(run_dir, "params")
    os.makedirs(params_dir, exist_ok=True)
    actions = []
    # The cell's domain id (ROS_DOMAIN_ID, else derived from the namespace) and its confinement to this host.
    environment = cell_environment(namespace)
    specs = enabled_nodes(params, flags)
    params_file.check_demo(params, specs, params_file.is_demo(cfg["params_file"]), cfg["params_file"])
    params = params_file.with_simulated_inputs(params, specs)
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
            arguments=["--ros-args", "--log-level", cfg["log_level"], *enclave_arguments(namespace, spec.name)],
            respawn=spec.respawn,
            respawn_delay=2.0,
            output="screen",
            emulate_tty=True,
            additional_env={**environment, "PYTHONUNBUFFERED": "1"},
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
            arguments=["--ros-args", "--log-level", cfg["log_level"], *enclave_arguments(namespace, "cell_manager")],
            respawn=True,
            respawn_delay=2.0,
            output="screen",
            emulate_tty=True,
            additional_env=environment,
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
