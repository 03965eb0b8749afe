"""Params files are read the same way by the runner and the launch file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qc_cell.bringup import params_file
from qc_cell.bringup.cell_runner import FLAGS, enabled_nodes
from qc_cell.cell_graph import NODES
from qc_cell.reject.station import INPUTS as STATION_INPUTS

REPO = Path(__file__).resolve().parents[4]


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
    out = params_file.argument_overrides({"backend": "onnxruntime", "source": "", "namespace": "cell1"})
    assert out == {"inference": {"backend": "onnxruntime"}}
    params = params_file.load(REPO / "params" / "cell.yaml", out)
    assert params["inference"]["backend"] == "onnxruntime"
    assert params["camera_driver"]["source"] == "v4l2"


@pytest.mark.parametrize(
    ("namespace", "fqn"), [("", "/decision"), ("cell1", "/cell1/decision"), ("/a/b/", "/a/b/decision")]
)
def test_node_params_are_keyed_by_fully_qualified_name(namespace, fqn):
    text = params_file.node_params_yaml(namespace, "decision", {"defective_threshold": 0.8})
    assert yaml.safe_load(text) == {fqn: {"ros__parameters": {"defective_threshold": 0.8}}}


def test_optional_nodes_follow_flags_then_params_file():
    params = {"process_simulator": {"scenario": "normal"}, "cloud_bridge": {}, "decision": {"x": 1}}
    names = lambda flags: {spec.name for spec in enabled_nodes(params, flags)}  # noqa: E731
    # auto never starts a simulator, although the params file configures it (issue 17: no simulator in production)
    assert "process_simulator" not in names({}) and "cloud_bridge" not in names({})
    assert "process_simulator" in names({"use_process_sim": True})
    assert "cloud_bridge" in names({"use_bridge": True})
    assert "process_simulator" not in names({"use_process_sim": False})
    assert {"camera_driver", "inference", "sensor_fusion", "decision", "reject_actuator"} <= names({})


# ---- base and overlays --------------------------------------------------------------------------------------------
BEFORE = yaml.safe_load((Path(__file__).with_name("params_before_overlays.yaml")).read_text())


def _intended_changes(deployment: str, state: Path) -> dict[tuple[str, str], object]:
    """What differs on purpose from the parameters the files gave before they became overlays."""
    # Relative paths resolve against the params file's folder: the model the README's commands (run from the
    # repository root) loaded, now from any folder.
    changes: dict[tuple[str, str], object] = {("inference", "model_path"): str(REPO / "models" / "default")}
    # Re-inspect parts go to a divert lane by default (issue 17): its distance and outputs. Production cells are
    # triggered by a part sensor, which gives the encoder count speed_source encoder needs (the demo runs free).
    if deployment != "demo":
        changes[("camera_driver", "mode")] = "triggered"
    changes.update(
        {
            ("reject_actuator", "divert_distance_mm"): 1200.0,
            ("reject_actuator", "modbus_divert_address"): 2,
            ("reject_actuator", "gpio_divert_pin"): 18,
            # Samples are training data: JPEG q85 artefacts taught models a feature the raw frames lack (issue 22).
            ("cloud_bridge", "sample_jpeg_quality"): 95,
        }
    )
    if deployment == "demo":  # the demo's state lives in the run's state folder, no longer in /tmp/qc_cell_demo
        changes.update(
            {
                ("camera_driver", "state_dir"): f"{state}/camera",
                ("inference", "model_store_dir"): f"{state}/model_store",
                ("cloud_bridge", "outbox_path"): f"{state}/outbox.sqlite3",
                ("cloud_bridge", "update_dir"): f"{state}/updates",
                ("cloud_bridge", "model_store_dir"): f"{state}/model_store",
            }
        )
    return changes


def _added_since(deployment: str, state: Path) -> dict[tuple[str, str], object]:
    """Parameters added after the files became overlays, with their value in each shipped file."""
    return {
        ("cloud_bridge", "simulated_inputs"): "",
        ("cloud_bridge", "sample_random_rate"): 0.01,  # random samples of every verdict (issue 20)
        ("reject_actuator", "divert_verdicts"): ["REINSPECT"],  # unset before: no lane for re-inspect parts
        ("reject_actuator", "sim_faults"): "",
        # the demo's sim driver simulates a confirmation sensor; the production files have none wired yet
        ("reject_actuator", "confirm_window_ms"): 100.0 if deployment == "demo" else 0.0,
        ("reject_actuator", "heartbeat_period_ms"): 250.0,
        ("reject_actuator", "journal_path"): (
            f"{state}/reject_journal.jsonl"
            if deployment == "demo"
            else "~/.local/share/qc_cell/reject_actuator/journal.jsonl"
        ),
        ("reject_actuator", "heartbeat_nodes"): ["camera_driver", "inference", "sensor_fusion", "decision"],
        ("reject_actuator", "heartbeat_stale_s"): 3.0,
        ("reject_actuator", "reconcile_grace_ms"): 1000.0,
        ("reject_actuator", "gpio_heartbeat_pin"): 22,
        ("reject_actuator", "modbus_heartbeat_address"): 3,
        ("camera_driver", "frame_pool"): True,  # frames through shared memory (issue 24)
        ("camera_driver", "frame_pool_slots"): 12,
        ("camera_driver", "frame_pool_lease_s"): 2.0,
        ("inference", "frame_pool"): True,
        ("camera_driver", "frame_pool_attach_wait_s"): 1.0,  # frame pool announced before its first frame
        ("cloud_bridge", "frame_pool"): True,  # the bridge reads sampled frames from the pool
        # the latency-aware offload policy (issue 21): its defaults in the base file
        ("cloud_bridge", "offload_roi"): [0],
        ("cloud_bridge", "offload_margin_ms"): 20.0,
        ("cloud_bridge", "offload_prior_rtt_ms"): 100.0,
        ("cloud_bridge", "offload_prior_bandwidth_mbps"): 5.0,
        ("cloud_bridge", "offload_min_bandwidth_mbps"): 0.2,
        ("cloud_bridge", "offload_max_backlog"): 8,
        ("cloud_bridge", "offload_overload_threshold"): 0.05,
        ("cloud_bridge", "offload_second_opinion_share"): 0.0,  # second opinions on NORMAL parts: off
        ("decision", "bands"): "params",  # the proposed bands of the model package, opt-in (issue 25)
        **{("reject_actuator", f"gpio_{name}_pin"): -1 for name in STATION_INPUTS},
        **{("reject_actuator", f"modbus_{name}_address"): -1 for name in STATION_INPUTS},
        # belt tracking: the demo tracks the sim driver's belt input; production until a belt input is wired: none
        ("reject_actuator", "belt_source"): "running_input" if deployment == "demo" else "none",
        ("reject_actuator", "belt_stale_ms"): 500.0,
        ("reject_actuator", "modbus_encoder_address"): -1,
        # line signals on a second driver: none in the shipped files
        ("reject_actuator", "signals_driver"): "",
        **{("reject_actuator", f"signals_gpio_{c}_pin"): -1 for c in ("stop_line", "heartbeat")},
        ("reject_actuator", "signals_modbus_host"): "127.0.0.1",
        ("reject_actuator", "signals_modbus_port"): 502,
        ("reject_actuator", "signals_modbus_device_id"): 1,
        **{("reject_actuator", f"signals_modbus_{c}_address"): -1 for c in ("stop_line", "heartbeat")},
        # the line-camera sources (issue 23): camera defaults everywhere
        **{("camera_driver", name): 0 for name in ("offset_x", "offset_y", "binning_x", "binning_y")},
        **{("camera_driver", name): "" for name in ("guid", "trigger_source", "trigger_activation", "topic")},
        ("camera_driver", "exposure"): 0.0,
        ("camera_driver", "gain"): -1.0,
        ("camera_driver", "trigger_delay"): 0.0,
        ("camera_driver", "genicam_features"): [""],
        ("camera_driver", "trigger_tolerance_s"): 0.05,
        ("camera_driver", "trigger_timeout_s"): 1.0,
        ("camera_driver", "playback"): "recorded",
        ("camera_driver", "lighting"): 1.0,  # the synthetic generator's light (drift tests, issue 22)
    }


@pytest.mark.parametrize("deployment", ["cell", "demo", "jetson"])
def test_overlays_merged_onto_the_base_give_the_parameters_the_files_gave_before(deployment, tmp_path):
    merged = params_file.with_state_dir(params_file.load(REPO / "params" / f"{deployment}.yaml"), tmp_path)
    expected = {node: dict(values) for node, values in BEFORE[deployment].items()}
    for (node, name), value in _intended_changes(deployment, tmp_path).items():
        assert name in expected[node], f"{node}.{name} is not a parameter of the frozen {deployment}.yaml"
        expected[node][name] = value
    for (node, name), value in _added_since(deployment, tmp_path).items():
        assert name not in expected[node], f"{node}.{name} is in the frozen {deployment}.yaml: not an added one"
        expected[node][name] = value
    assert set(merged) == set(expected)
    for node in expected:
        assert merged[node] == expected[node], f"{deployment}.yaml: {node} differs from before the overlays"


def test_the_overlays_hold_only_what_differs_from_the_base():
    base = yaml.safe_load((REPO / "params" / "cell.yaml").read_text())
    for name in ("demo.yaml", "jetson.yaml"):
        overlay = yaml.safe_load((REPO / "params" / name).read_text())
        assert overlay.pop("extends") == "cell.yaml"
        overlay.pop(params_file.DEMO, None)  # a declaration of the file, not a node
        for node, section in overlay.items():
            same = [k for k, v in section["ros__parameters"].items() if base[node]["ros__parameters"].get(k) == v]
            assert not same, f"{name}: {node} repeats the base's value of {same}"
        lines = len((REPO / "params" / name).read_text().splitlines())
        assert lines < len((REPO / "params" / "cell.yaml").read_text().splitlines()) / 4, f"{name}: {lines} lines"


def _overlay(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"extends: {REPO / 'params' / 'cell.yaml'}\n{text}")
    return path


def test_an_overlay_may_only_set_parameters_of_its_base(tmp_path):
    path = _overlay(tmp_path, "decision:\n  ros__parameters:\n    reinspect_treshold: 0.4\n")
    with pytest.raises(params_file.ParamsFileError, match=r"decision has no parameter 'reinspect_treshold'.*did you"):
        params_file.load(path)
    missing = tmp_path / "orphan.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(params_file.ParamsFileError, match=r"nowhere.yaml does not exist"):
        params_file.load(missing)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(params_file.ParamsFileError, match="loops back"):
        params_file.load(loop)


def test_an_overlay_of_an_overlay_applies_both_in_order(tmp_path):
    (tmp_path / "line.yaml").write_text(
        f"extends: {REPO / 'params' / 'demo.yaml'}\ncamera_driver:\n  ros__parameters:\n    rate_hz: 5.0\n"
    )
    (tmp_path / "cell7.yaml").write_text("extends: line.yaml\ncloud_bridge:\n  ros__parameters:\n    cell: cell7\n")
    params = params_file.load(tmp_path / "cell7.yaml")
    assert params["camera_driver"]["rate_hz"] == 5.0 and params["camera_driver"]["source"] == "synthetic"
    assert params["cloud_bridge"]["cell"] == "cell7" and params["cloud_bridge"]["site"] == "demo"


def test_relative_paths_resolve_against_the_file_that_sets_them_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = params_file.load(REPO / "params" / "demo.yaml")
    assert Path(shipped["inference"]["model_path"]) == REPO / "models" / "default"
    assert (Path(shipped["inference"]["model_path"]) / "manifest.json").is_file()
    site = tmp_path / "site"
    site.mkdir()
    path = _overlay(
        site,
        "inference:\n  ros__parameters:\n    model_path: models/mine\n    model_store_dir: ~/store\n"
        "cloud_bridge:\n  ros__parameters:\n    update_public_keys: keys/a.pub, /etc/b.pub\n",
    )
    params = params_file.load(path, {"camera_driver": {"path": "videos/line.mp4"}})
    assert params["inference"]["model_path"] == str(site / "models" / "mine")
    assert params["inference"]["model_store_dir"] == "~/store", "~ is left to the node"
    assert params["cloud_bridge"]["update_public_keys"] == f"{site / 'keys' / 'a.pub'},/etc/b.pub"
    assert params["camera_driver"]["path"] == str(tmp_path / "videos" / "line.mp4"), "overrides: the working dir"


# ---- derived parameters and rules between nodes --------------------------------------------------------------------
def test_the_visual_bands_are_configured_once_in_the_decision_node():
    params = params_file.load(REPO / "params" / "cell.yaml", {"decision": {"reinspect_threshold": 0.6}})
    assert params["inference"]["overlay_reinspect_threshold"] == 0.6
    assert params["inference"]["overlay_defective_threshold"] == params["decision"]["defective_threshold"]
    with pytest.raises(params_file.OverrideError, match=r"derived from decision.reinspect_threshold"):
        params_file.parse_override(
            "inference.overlay_reinspect_threshold=0.3", params_file.known_parameters(REPO / "params" / "cell.yaml")
        )


def test_a_derived_parameter_set_in_a_file_must_agree_with_its_source(tmp_path):
    path = tmp_path / "full.yaml"  # a complete file of the old form, which still set the overlay bands
    text = (REPO / "params" / "cell.yaml").read_text()
    path.write_text(
        text.replace(
            "inference:\n  ros__parameters:\n",
            "inference:\n  ros__parameters:\n    overlay_reinspect_threshold: 0.5\n",
            1,
        )
    )
    assert params_file.load(path)["inference"]["overlay_reinspect_threshold"] == 0.5
    with pytest.raises(params_file.ParamsFileError, match=r"overlay_reinspect_threshold \(0.5\) differs from "):
        params_file.load(path, {"decision": {"reinspect_threshold": 0.6}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"inference": {"deadline_ms": 600.0}}, "inference.deadline_ms 600 must be above 0 and at most decision"),
        ({"inference": {"deadline_ms": 0.0}}, r"inference.deadline_ms 0 \(none\) must be above 0"),
        ({"decision": {"result_deadline_ms": 1700.0}}, "must stay below the camera-to-ejector travel time 1600 ms"),
        ({"reject_actuator": {"belt_speed_mm_s": 1800.0}}, "travel time 444.444 ms"),
        ({"reject_actuator": {"watchdog_timeout_s": 0.4}}, "watchdog_timeout_s 0.4 must exceed decision"),
        ({"reject_actuator": {"watchdog_timeout_s": 1.6}}, "watchdog_timeout_s 1.6 must stay below .* 1600 ms"),
        ({"camera_driver": {"mode": "free_run"}}, "speed_source encoder needs the encoder count .* free_run"),
        (
            {"cloud_bridge": {"offload_enabled": True, "offload_slack_ms": 1590.0}},
            r"offload_slack_ms 1590 must leave the actuator its latency.*\(1580 ms\)",
        ),
    ],
)
def test_rules_between_nodes_are_checked_at_load_time(overrides, message):
    with pytest.raises(params_file.ParamsFileError, match=message) as error:
        params_file.load(REPO / "params" / "cell.yaml", overrides)
    assert "\n" not in str(error.value)


def test_rules_hold_where_they_are_met_at_their_limits():
    limits = {
        "inference": {"deadline_ms": 500.0},
        "reject_actuator": {"watchdog_timeout_s": 0.0},  # watchdog off: no rule
        "cloud_bridge": {"offload_enabled": True, "offload_slack_ms": 1580.0},
    }
    params_file.load(REPO / "params" / "cell.yaml", limits)


# ---- overrides -------------------------------------------------------------------------------------------------
def test_overrides_name_a_node_and_a_parameter_of_the_base():
    known = params_file.known_parameters(REPO / "params" / "demo.yaml")
    assert known["reject_actuator"] >= {"modbus_host", "gpio_reject_pin", "divert_verdicts"}
    assert params_file.parse_override("decision.result_deadline_ms=400", known) == (
        "decision",
        "result_deadline_ms",
        400,
    )
    for item, message in [
        ("foo.bar=1", "unknown node 'foo'"),
        ("decision.no_such_param=3", "decision has no parameter 'no_such_param'"),
        ("inference.treads=2", "did you mean 'threads'"),
        ("decision=3", "expected node.parameter=value"),
    ]:
        with pytest.raises(params_file.OverrideError, match=message) as error:
            params_file.parse_override(item, known)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(("value", "flag"), [("auto", None), ("true", True), ("On", True), ("0", False), ("no", False)])
def test_flags_are_true_false_or_auto(value, flag):
    assert params_file.parse_flag(value) is flag


def test_a_flag_that_is_none_of_them_is_refused():
    with pytest.raises(ValueError, match="'sometimes' is not true, false or auto"):
        params_file.parse_flag("sometimes")


def test_state_paths_follow_the_runs_state_folder():
    params = params_file.load(REPO / "params" / "demo.yaml")
    assert params_file.uses_state_dir(params)
    assert not params_file.uses_state_dir(params_file.load(REPO / "params" / "cell.yaml"))
    placed = params_file.with_state_dir(params, "/run/7")
    assert placed["cloud_bridge"]["outbox_path"] == "/run/7/outbox.sqlite3"
    assert not params_file.uses_state_dir(placed)


def test_a_written_merged_file_loads_back_to_the_same_parameters(tmp_path):
    merged = params_file.load(REPO / "params" / "jetson.yaml", {"decision": {"reinspect_threshold": 0.6}})
    path = tmp_path / "merged.yaml"
    path.write_text(params_file.to_yaml(merged))
    assert "overlay_reinspect_threshold" not in path.read_text(), "derived parameters are not written"
    assert params_file.load(path) == merged


# ---- simulators only in a demo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cell.yaml", "jetson.yaml"])
def test_a_production_start_on_auto_runs_no_simulator(name):
    params = params_file.load(REPO / "params" / name)
    auto = {flag: None for flag in FLAGS}
    names = {spec.name for spec in enabled_nodes(params, auto)}
    assert not names & {"process_simulator", "arm_server"}, f"{name} on auto starts simulators: {sorted(names)}"
    assert not params_file.is_demo(REPO / "params" / name)
    params_file.check_demo(params, enabled_nodes(params, auto), demo=False, where=name)  # accepted


@pytest.mark.parametrize(
    ("flags", "overrides", "named"),
    [
        ({"use_process_sim": True}, {}, "process_simulator"),
        ({"use_arm_sim": True}, {}, "arm_server"),
        ({}, {"reject_actuator": {"driver": "sim"}}, "reject_actuator.driver=sim"),
        ({}, {"camera_driver": {"source": "synthetic"}}, "camera_driver.source=synthetic"),
    ],
)
def test_a_production_params_file_that_enables_a_simulator_is_refused(flags, overrides, named):
    path = REPO / "params" / "jetson.yaml"
    params = params_file.load(path, overrides)
    nodes = enabled_nodes(params, flags)
    with pytest.raises(params_file.ParamsFileError, match=f"production file .*enables simulated equipment: {named}"):
        params_file.check_demo(params, nodes, params_file.is_demo(path), path)


def test_a_demo_declares_itself_and_may_simulate_and_its_records_say_so(tmp_path):
    demo = REPO / "params" / "demo.yaml"
    assert params_file.is_demo(demo)
    # An overlay of the demo is a demo, unless it says otherwise.
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {demo}\n")
    assert params_file.is_demo(child)
    child.write_text(f"extends: {demo}\ndemo: false\n")
    assert not params_file.is_demo(child)
    params = params_file.load(demo)
    nodes = enabled_nodes(params, {"use_process_sim": True, "use_bridge": True})
    params_file.check_demo(params, nodes, True, demo)
    marked = params_file.with_simulated_inputs(params, nodes)
    assert marked["cloud_bridge"]["simulated_inputs"] == "process_sensors,ejector,camera"
    # A merged file (docker/params_overlay.py) keeps the declaration.
    merged = tmp_path / "merged.yaml"
    merged.write_text(params_file.to_yaml(params, demo=True))
    assert params_file.is_demo(merged) and params_file.load(merged) == params


def test_the_reference_arm_is_named_only_when_it_is_the_ejector():
    params = params_file.load(REPO / "params" / "demo.yaml", {"reject_actuator": {"driver": "robot_arm"}})
    nodes = enabled_nodes(params, {"use_arm_sim": True})
    assert params_file.simulated_inputs(params, nodes) == ["robot_arm", "camera"]
    sim_driver = params_file.load(REPO / "params" / "demo.yaml")
    assert "robot_arm" not in params_file.simulated_inputs(sim_driver, enabled_nodes(sim_driver, {"use_arm_sim": True}))


def test_demo_is_a_boolean(tmp_path):
    with pytest.raises(params_file.ParamsFileError, match="'demo' is true"):
        params_file.load(_overlay(tmp_path, "demo: maybe\n"))
