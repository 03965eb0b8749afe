"""The health check's rules, without ROS: which statuses are the cell's, and when the cell is healthy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from qc_cell import healthcheck as hc
from qc_cell.healthcheck import ERROR, OK, STALE, WARN, StatusSample, evaluate, owner

NOW = 1_700_000_000 * hc.NS_PER_S
NODES = ("camera_driver", "inference", "decision")


def sample(name: str, level: int = OK, message: str = "ok", age_s: float = 0.5) -> StatusSample:
    return StatusSample(name, level, message, NOW - int(age_s * hc.NS_PER_S))


def all_ok(namespace: str = "cell1") -> list[StatusSample]:
    return [sample(f"/{namespace}/{node}") for node in NODES]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"\x00", OK), (b"\x01", WARN), (bytearray(b"\x02"), ERROR), (b"\x03", STALE), (2, ERROR)],
)
def test_level_of_reads_the_byte_field(raw, expected):
    assert hc.level_of(raw) == expected


def test_level_of_rejects_a_multi_byte_value():
    with pytest.raises(ValueError, match="one byte"):
        hc.level_of(b"\x00\x01")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/cell1/inference", "inference"),
        ("cell1/inference", "inference"),
        ("inference", "inference"),  # diagnostic_updater style, plain node name
        ("inference: model", "inference"),
        ("/cell1/inference/backend: tensorrt", "inference"),
        ("/cell1/camera_driver", "camera_driver"),
        ("/cell2/inference", None),  # another cell
        ("cell2/inference", None),
        ("/cell1/inferencer", None),  # a prefix of a name is not the name
        ("inference_monitor", None),
        ("/cell1/arm_server", None),  # a node this check was not asked about
        ("", None),
    ],
)
def test_owner_matches_fully_qualified_relative_and_plain_names(name, expected):
    assert owner(name, "cell1", NODES) == expected


def test_owner_without_namespace():
    assert owner("/decision", "", NODES) == "decision"
    assert owner("decision: deadline", "", NODES) == "decision"
    assert owner("/cell1/decision", "", NODES) is None


def test_all_ok_and_warn_fresh_is_healthy():
    samples = [*all_ok(), sample("/cell1/inference/queue", WARN, "queue 80% full")]
    verdict = evaluate(samples, "cell1", NODES, NOW)
    assert verdict.healthy and verdict.exit_code == 0, verdict.report()
    assert verdict.lines[0].startswith("HEALTHY: 3 node(s), 4 status(es)")
    assert any("queue 80% full" in line for line in verdict.lines)


@pytest.mark.parametrize(("level", "word"), [(ERROR, "ERROR"), (STALE, "STALE"), (7, "level 7")])
def test_error_stale_or_unknown_level_is_unhealthy_and_named(level, word):
    samples = [*all_ok(), sample("/cell1/inference", level, "model file missing")]
    verdict = evaluate(samples, "cell1", NODES, NOW)
    assert not verdict.healthy and verdict.exit_code == 1
    assert verdict.lines[0].startswith("UNHEALTHY: 1 problem(s)")
    assert verdict.lines[1] == f"/cell1/inference: '/cell1/inference' {word} age 0.5 s: model file missing"


def test_a_silent_node_is_unhealthy():
    samples = [s for s in all_ok() if "decision" not in s.name]
    verdict = evaluate(samples, "cell1", NODES, NOW)
    assert not verdict.healthy
    assert "/cell1/decision: no status on /diagnostics" in verdict.lines


def test_nothing_received_is_unhealthy():
    verdict = evaluate([], "cell1", NODES, NOW)
    assert not verdict.healthy
    assert sum("no status" in line for line in verdict.lines) == len(NODES)


def test_no_nodes_to_check_is_unhealthy():
    verdict = evaluate(all_ok(), "cell1", (), NOW)
    assert not verdict.healthy and "no nodes" in verdict.report()


@pytest.mark.parametrize("age_s", [30.0, -30.0])  # an old stamp, or a clock far in the future
def test_stamp_far_from_the_clock_is_unhealthy(age_s):
    samples = [*all_ok()[:2], sample("/cell1/decision", OK, "fine", age_s=age_s)]
    verdict = evaluate(samples, "cell1", NODES, NOW, max_age_s=10.0)
    assert not verdict.healthy
    assert any("/cell1/decision" in line and "more than 10 s off the clock" in line for line in verdict.lines)


def test_stamp_within_max_age_is_fresh():
    samples = [*all_ok()[:2], sample("/cell1/decision", OK, "fine", age_s=9.0)]
    assert evaluate(samples, "cell1", NODES, NOW, max_age_s=10.0).healthy


def test_the_latest_status_of_a_name_counts():
    recovered = [*all_ok(), sample("/cell1/inference", ERROR, "no model"), sample("/cell1/inference", OK, "loaded")]
    assert evaluate(recovered, "cell1", NODES, NOW).healthy
    failed = [*all_ok(), sample("/cell1/inference", ERROR, "GPU lost")]
    assert not evaluate(failed, "cell1", NODES, NOW).healthy


def test_another_cells_error_is_ignored_but_counted():
    samples = [*all_ok("cell1"), sample("/cell2/inference", ERROR, "their problem")]
    verdict = evaluate(samples, "cell1", NODES, NOW)
    assert verdict.healthy, verdict.report()
    assert "1 other status(es) ignored" in verdict.lines[0]


def test_heard_from_all():
    assert hc.heard_from_all(all_ok(), "cell1", NODES)
    assert not hc.heard_from_all(all_ok()[:2], "cell1", NODES)
    assert not hc.heard_from_all(all_ok("cell2"), "cell1", NODES)


def test_the_rules_import_without_ros():
    code = "import sys, qc_cell.healthcheck; sys.exit('rclpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"qc_cell.healthcheck imported rclpy at module level: {result.stderr}"


# -- configuration: which nodes, and errors that must be exit 1 (Docker reserves 2) --------------------------
PARAMS = textwrap.dedent(
    """\
    camera_driver:
      ros__parameters: {source: synthetic}
    inference:
      ros__parameters: {}
    cloud_bridge:
      ros__parameters: {host: localhost}
    """
)


def parse(argv: list[str], env: dict[str, str] | None = None):
    return hc.build_parser(env or {}).parse_args(argv)


def test_expected_nodes_follow_the_params_file_and_flags(tmp_path):
    params = tmp_path / "cell.yaml"
    params.write_text(PARAMS)
    always = ["camera_driver", "inference", "sensor_fusion", "decision", "reject_actuator"]
    # auto: cloud_bridge runs because the file configures it; the simulators do not.
    assert hc.expected_nodes(parse(["--params-file", str(params)])) == [*always, "cloud_bridge"]
    # The same flags the entrypoint passes to the launch file, from the same environment variables.
    env = {"QC_PARAMS_FILE": str(params), "QC_USE_BRIDGE": "false", "QC_USE_PROCESS_SIM": "true"}
    assert hc.expected_nodes(parse([], env)) == [*always, "process_simulator"]
    assert hc.expected_nodes(parse([])) == always


def test_explicit_nodes_are_checked_against_the_cell_graph():
    assert hc.expected_nodes(parse(["--nodes", "inference, decision"])) == ["inference", "decision"]
    with pytest.raises(ValueError, match=r"unknown node\(s\) \['inferense'\]"):
        hc.expected_nodes(parse(["--nodes", "inferense"]))


@pytest.mark.parametrize(
    "argv",
    [["--nodes", "nope"], ["--params-file", "/does/not/exist.yaml"], ["--window", "0"], ["--use-bridge", "maybe"]],
)
def test_configuration_errors_exit_1_not_2(argv, capsys):
    assert hc.main(argv) == 1
    out = capsys.readouterr()
    assert "configuration error" in out.out or "error:" in out.err
