"""The RViz and rqt configs show the namespace `make demo` runs in, and only topics of the graph contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qc_cell.bringup import demo

REPO = Path(__file__).resolve().parents[4]
CONFIGS = sorted((REPO / "ros2_ws" / "src" / "qc_bringup" / "config").glob("inspection_cell.*"))
CONTRACT = (REPO / "docs" / "graph-contract.md").read_text()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_viewer_config_shows_the_demo_namespace_and_contract_topics(config):
    # Topic names, and rqt_plot's topic/field paths (/cell1/inspection/result/defect_probability).
    names = re.findall(r"/([a-z0-9_]+)/([a-z_]+/[a-z_]+)(/[a-z_]+)?", config.read_text())
    assert names, f"no topic in {config.name}"
    assert {namespace for namespace, _, _ in names} == {demo.NAMESPACE}, f"{config.name}: {names}"
    for _, topic, _ in names:
        assert f"| `{topic}` |" in CONTRACT, f"{config.name}: {topic} is not in docs/graph-contract.md"


def test_both_configs_are_checked():
    assert [path.suffix for path in CONFIGS] == [".perspective", ".rviz"]
