"""The cell's graph settings (qc_cell.cell_graph, docs/security.md), ROS-free: confined to the host unless
widened on purpose, a domain id of the cell's own, SROS2 enclaves per node when security is on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qc_cell.cell_graph import (
    PROFILE_VARIABLE,
    cell_environment,
    confinement,
    domain_id,
    enclave_arguments,
    graph_environment,
    network_wide,
)


def test_discovery_stays_on_the_host_with_each_distros_variable():
    assert confinement({}, "jazzy") == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    assert confinement({}, "kilted") == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    assert confinement({}, "humble") == {"ROS_LOCALHOST_ONLY": "1"}
    # Humble ignores the newer variable: it is no reason to leave its own unset.
    assert confinement({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, "humble") == {"ROS_LOCALHOST_ONLY": "1"}
    assert confinement({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, "jazzy") == {}  # the operator's choice stays


def test_the_transport_listens_on_loopback_unless_discovery_was_widened():
    assert not network_wide({}, "jazzy") and not network_wide({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, "jazzy")
    assert network_wide({"ROS_AUTOMATIC_DISCOVERY_RANGE": "subnet"}, "jazzy")
    assert network_wide({"ROS_LOCALHOST_ONLY": "0"}, "humble") and not network_wide({}, "humble")
    confined = Path(graph_environment({})[PROFILE_VARIABLE])
    assert confined.name == "fastdds_large_images.xml" and "<address>127.0.0.1</address>" in confined.read_text()
    wide = Path(
        graph_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_LOCALHOST_ONLY": "0"})[PROFILE_VARIABLE]
    )
    assert wide.is_file() and "interfaceWhiteList" not in wide.read_text()


def test_a_domain_of_the_cells_own():
    assert domain_id("cell1", {"ROS_DOMAIN_ID": "42"}) == "42"
    derived = {ns: int(domain_id(ns, {})) for ns in ("cell1", "cell2", "/plant1/line2/cell3", "")}
    assert all(1 <= d <= 100 for d in derived.values()), derived  # never 0, the default every install joins
    assert domain_id("/cell1/", {}) == domain_id("cell1", {}) and derived["cell1"] != derived["cell2"]
    assert cell_environment("cell1", {})["ROS_DOMAIN_ID"] == str(derived["cell1"])
    printed = subprocess.run(
        [sys.executable, "-m", "qc_cell.cell_graph", "environment", "cell1"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    ).stdout  # fmt: skip
    assert f"ROS_DOMAIN_ID={derived['cell1']}" in printed.splitlines()


def test_each_node_in_its_enclave_when_sros2_is_on():
    assert enclave_arguments("cell1", "inference", {}) == []
    assert enclave_arguments("cell1", "inference", {"ROS_SECURITY_ENABLE": "true"}) == ["--enclave", "/cell1/inference"]
    assert enclave_arguments("", "cell_runner", {"ROS_SECURITY_ENABLE": "true"}) == ["--enclave", "/cell_runner"]
