"""The cell runner's command line: bad input is one line on stderr and exit status 2, before anything starts;
each run keeps its state (model store, outbox, part counter) in its own folder unless one is given."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qc_cell.bringup.cell_runner import CellRunner

REPO = Path(__file__).resolve().parents[4]
DEMO = REPO / "params" / "demo.yaml"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "foo.bar=1"], "unknown node 'foo'"),
        (["--set", "decision.no_such_param=3"], "decision has no parameter 'no_such_param'"),
        (["--set", "inference.deadline_ms=900"], "inference.deadline_ms 900 must be above 0 and at most decision"),
        (["--use-bridge", "sometimes"], "argument --use-bridge: 'sometimes' is not true, false or auto"),
        (["--params-file", str(REPO / "params" / "cell.yaml"), "--state-dir", "/tmp/x"], "puts no state under"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(arguments, message, tmp_path):
    command = [sys.executable, "-m", "qc_cell.bringup.cell_runner", "--params-file", str(DEMO), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "started" not in result.stdout, "nothing may start"


def _node_params(runner: CellRunner, node: str) -> dict:
    text = (runner.run_dir / "params" / f"{node}.yaml").read_text()
    return next(iter(yaml.safe_load(text).values()))["ros__parameters"]


def test_each_run_keeps_its_state_in_a_folder_of_its_own():
    runners = [CellRunner(DEMO, namespace="t") for _ in range(2)]
    try:
        folders = [runner.state_dir for runner in runners]
        assert folders[0] != folders[1] and all(folder.is_dir() for folder in folders)
        for runner in runners:
            assert runner.state_dir == runner.run_dir / "state"
            assert _node_params(runner, "cloud_bridge")["outbox_path"] == f"{runner.state_dir}/outbox.sqlite3"
            assert _node_params(runner, "cloud_bridge")["update_dir"] == f"{runner.state_dir}/updates"
            assert _node_params(runner, "inference")["model_store_dir"] == f"{runner.state_dir}/model_store"
            assert _node_params(runner, "camera_driver")["state_dir"] == f"{runner.state_dir}/camera"
    finally:
        for runner in runners:
            shutil.rmtree(runner.run_dir)


def test_a_given_state_folder_is_used_and_relative_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CellRunner(DEMO, run_dir=tmp_path / "run", state_dir="kept")
    assert runner.state_dir == tmp_path / "kept"
    assert _node_params(runner, "inference")["model_store_dir"] == f"{tmp_path}/kept/model_store"
    assert _node_params(runner, "inference")["model_path"] == str(REPO / "models" / "default")
