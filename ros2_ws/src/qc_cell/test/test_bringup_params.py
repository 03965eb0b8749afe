"""Params files are read the same way by the runner and the launch file."""

from __future__ import annotations

import pytest
import yaml

from qc_cell.bringup import params_file
from qc_cell.bringup.cell_runner import enabled_nodes
from qc_cell.cell_graph import NODES

REPO = __import__("pathlib").Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("name", ["cell.yaml", "demo.yaml", "jetson.yaml"])
def test_shipped_params_files_load(name):
    params = params_file.load(REPO / "params" / name)
    assert set(params) <= {spec.name for spec in NODES}
    assert {"camera_driver", "inference", "decision", "reject_actuator"} <= set(params)


def test_unknown_node_and_bad_shapes_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera_drivr:\n  ros__parameters: {rate_hz: 5.0}\n")
    with pytest.raises(params_file.ParamsFileError, match="unknown node 'camera_drivr'"):
        params_file.load(bad)
    bad.write_text("decision:\n  thresholds: 1\n")
    with pytest.raises(params_file.ParamsFileError, match="ros__parameters"):
        params_file.load(bad)
    bad.write_text("decision: [1, 2\n")
    with pytest.raises(params_file.ParamsFileError, match="not valid YAML"):
        params_file.load(bad)
    with pytest.raises(params_file.ParamsFileError, match="does not exist"):
        params_file.load(tmp_path / "missing.yaml")


def test_arguments_override_their_node_parameter_only_when_set():
    params = {"inference": {"backend": "auto", "threads": 2}, "camera_driver": {"source": "v4l2"}}
    out = params_file.apply_arguments(params, {"backend": "onnxruntime", "source": "", "namespace": "cell1"})
    assert out["inference"] == {"backend": "onnxruntime", "threads": 2}
    assert out["camera_driver"] == {"source": "v4l2"}
    assert params["inference"]["backend"] == "auto", "the input must not be modified"


@pytest.mark.parametrize(
    ("namespace", "fqn"), [("", "/decision"), ("cell1", "/cell1/decision"), ("/a/b/", "/a/b/decision")]
)
def test_node_params_are_keyed_by_fully_qualified_name(namespace, fqn):
    text = params_file.node_params_yaml(namespace, "decision", {"defective_threshold": 0.8})
    assert yaml.safe_load(text) == {fqn: {"ros__parameters": {"defective_threshold": 0.8}}}


def test_optional_nodes_follow_flags_then_params_file():
    params = {"process_simulator": {"scenario": "normal"}, "cloud_bridge": {}}
    names = lambda flags: {spec.name for spec in enabled_nodes(params, flags)}  # noqa: E731
    assert "process_simulator" in names({}) and "cloud_bridge" not in names({})
    assert "cloud_bridge" in names({"use_bridge": True})
    assert "process_simulator" not in names({"use_process_sim": False})
    assert {"camera_driver", "inference", "sensor_fusion", "decision", "reject_actuator"} <= names({})
