"""launch/inspection_cell.launch.py, run against stand-ins for the `launch`/`launch_ros` API it uses.

`launch` and `launch_ros` are not on PyPI, so `ros2 launch` cannot run here (it runs on the Jetson's system ROS 2).
The stand-ins record what the file asks launch to start; the test checks that it is the cell the runner starts from
the same params file: the same nodes, lifecycle nodes as LifecycleNode, the per-node params files, and the
cell_manager that activates the lifecycle nodes in order; and that it leaves nothing in the temp folder.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from qc_cell.bringup import params_file
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
def launch_log_dir(tmp_path) -> Path:
    """This launch's log folder (launch.logging.launch_config.log_dir: ~/.ros/log/<date>-<host>-<pid>)."""
    folder = tmp_path / "ros_log" / "launch-1"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def launch_module(monkeypatch, launch_log_dir):
    kinds = {}
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "LaunchDescription", "Node", "LifecycleNode"):
        kinds[name] = type(name, (_Action,), {})
    modules = {
        "launch": {"LaunchDescription": kinds["LaunchDescription"]},
        "launch.actions": {name: kinds[name] for name in ("DeclareLaunchArgument", "OpaqueFunction")},
        "launch.logging": {"launch_config": types.SimpleNamespace(log_dir=str(launch_log_dir))},
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
    state = str(tmp_path / "state")
    actions = _launch(
        launch_module, namespace="cell7", params_file=str(params_path), backend="onnxruntime", state_dir=state
    )
    runner = CellRunner(
        params_path, namespace="cell7", arguments={"backend": "onnxruntime"}, run_dir=tmp_path, state_dir=state
    )

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


def _temp_entries() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).iterdir()}


def test_a_launch_leaves_nothing_in_the_temp_folder_and_keeps_its_files_with_its_logs(launch_module, launch_log_dir):
    before = _temp_entries()
    actions = _launch(launch_module, namespace="cell3", params_file=str(REPO / "params" / "demo.yaml"))
    assert not [name for name in _temp_entries() - before if name.startswith("qc_cell_params_")]
    run = launch_log_dir / "qc_cell" / "cell3"
    for action in actions:
        if action.kwargs["executable"] != "cell_manager":
            assert Path(action.kwargs["parameters"][0]).parent == run / "params"
    bridge = next(a for a in actions if a.kwargs["name"] == "cloud_bridge")
    values = yaml.safe_load(Path(bridge.kwargs["parameters"][0]).read_text())["/cell3/cloud_bridge"]["ros__parameters"]
    assert values["outbox_path"] == f"{run / 'state'}/outbox.sqlite3", "a new state folder for every launch"
    assert (run / "state").is_dir()


def test_relative_paths_do_not_depend_on_the_folder_ros2_launch_runs_in(launch_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    actions = _launch(launch_module, params_file=str(REPO / "params" / "demo.yaml"))
    inference = next(a for a in actions if a.kwargs["name"] == "inference")
    values = yaml.safe_load(Path(inference.kwargs["parameters"][0]).read_text())["/inference"]["ros__parameters"]
    assert values["model_path"] == str(REPO / "models" / "default")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"use_bridge": "sometimes"}, "launch argument use_bridge: 'sometimes' is not true, false or auto"),
        ({"params_file": str(REPO / "params" / "cell.yaml"), "state_dir": "/tmp/x"}, "puts no state under"),
    ],
)
def test_bad_launch_arguments_are_refused(launch_module, arguments, message):
    with pytest.raises(params_file.ParamsFileError, match=message):
        _launch(launch_module, **{"params_file": str(REPO / "params" / "demo.yaml"), **arguments})
