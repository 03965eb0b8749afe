"""launch/inspection_cell.launch.py, run against stand-ins for the `launch`/`launch_ros` API it uses.

`launch` and `launch_ros` are not on PyPI, so `ros2 launch` cannot run here (it runs on the Jetson's system ROS 2).
The stand-ins record what the file asks launch to start; the test checks that it is the cell the runner starts from
the same params file: the same nodes, lifecycle nodes as LifecycleNode, the per-node params files, and the
cell_manager that activates the lifecycle nodes in order.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from qc_cell.bringup.cell_runner import CellRunner

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "inspection_cell.launch.py"


class _Action:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


_ARGUMENTS: dict[str, str] = {}  # the launch arguments of the current test (what `ros2 launch ... name:=value` sets)


class _LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context) -> str:
        return _ARGUMENTS[self.name]


@pytest.fixture
def launch_module(monkeypatch):
    kinds = {}
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "LaunchDescription", "Node", "LifecycleNode"):
        kinds[name] = type(name, (_Action,), {})
    modules = {
        "launch": {"LaunchDescription": kinds["LaunchDescription"]},
        "launch.actions": {name: kinds[name] for name in ("DeclareLaunchArgument", "OpaqueFunction")},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": kinds["Node"], "LifecycleNode": kinds["LifecycleNode"]},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda package: str(REPO)},
    }
    for name, attributes in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("inspection_cell_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(module, **arguments):
    defaults = {name: default for name, (default, _text) in module.ARGUMENTS.items()}
    _ARGUMENTS.clear()
    _ARGUMENTS.update(defaults, **arguments)
    description = module.generate_launch_description()
    declared = [a.args[0] for a in description.args[0] if type(a).__name__ == "DeclareLaunchArgument"]
    assert set(declared) == set(module.ARGUMENTS)
    opaque = description.args[0][-1]
    return opaque.kwargs["function"](context=None)


def test_the_launch_file_starts_the_cell_the_runner_starts(launch_module, tmp_path):
    params_path = REPO / "params" / "demo.yaml"
    actions = _launch(launch_module, namespace="cell7", params_file=str(params_path), backend="onnxruntime")
    runner = CellRunner(params_path, namespace="cell7", arguments={"backend": "onnxruntime"}, run_dir=tmp_path)

    cell_nodes = [a for a in actions if a.kwargs["executable"] != "cell_manager"]
    nodes = [a.kwargs for a in cell_nodes]
    assert [n["name"] for n in nodes] == [spec.name for spec in runner.nodes]
    for action, spec in zip(cell_nodes, runner.nodes, strict=True):
        assert type(action).__name__ == ("LifecycleNode" if spec.lifecycle else "Node")
        assert action.kwargs["namespace"] == "cell7" and action.kwargs["respawn"] == spec.respawn
        launched = yaml.safe_load(Path(action.kwargs["parameters"][0]).read_text())
        assert launched == yaml.safe_load((tmp_path / "params" / f"{spec.name}.yaml").read_text())
    inference = yaml.safe_load(Path(nodes[[n["name"] for n in nodes].index("inference")]["parameters"][0]).read_text())
    assert inference["/cell7/inference"]["ros__parameters"]["backend"] == "onnxruntime"

    manager = [a.kwargs for a in actions if a.kwargs["executable"] == "cell_manager"]
    assert len(manager) == 1 and manager[0]["namespace"] == "cell7"
    assert manager[0]["parameters"] == [{"nodes": [spec.name for spec in runner.nodes]}]


def test_flags_turn_optional_nodes_off(launch_module):
    actions = _launch(launch_module, params_file=str(REPO / "params" / "demo.yaml"), use_bridge="false")
    names = [a.kwargs["name"] for a in actions]
    assert "cloud_bridge" not in names and {"camera_driver", "inference", "cell_manager"} <= set(names)
