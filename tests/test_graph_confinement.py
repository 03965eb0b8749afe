"""The cell's graph is confined to its host (issue 18): a participant on another host (here: another network
namespace, joined to this one by a veth pair, on the same domain, even naming this host as a static peer)
cannot call inference/load_model nor publish model/active to the cell. The control run proves the path between
the two namespaces carries ROS 2: the same attacker reaches a cell whose discovery was widened on purpose.

Needs root (ip netns) and iproute2; skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qc_cell.cell_graph import cell_environment
from qc_cell.inference.synthetic_models import write_package
from qc_cell.ros import qos
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import ModelInfo

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2 (ip netns)"),
]

RANGE_VARIABLES = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")

# The attacker: a plain ROS 2 participant with default settings, told where the cell's host is.
ATTACKER = r"""
import json, sys, time
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from qc_interfaces.msg import ModelInfo
from qc_interfaces.srv import LoadModel
from qc_cell.ros import qos

namespace, seconds = sys.argv[1], float(sys.argv[2])
context = Context()
rclpy.init(context=context)
node = rclpy.create_node("attacker", context=context)
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
client = node.create_client(LoadModel, f"/{namespace}/inference/load_model")
spoof = node.create_publisher(ModelInfo, f"/{namespace}/model/active", qos.LATCHED)
spoof.publish(ModelInfo(version="999", state=ModelInfo.STATE_ACTIVE))
found = client.wait_for_service(timeout_sec=seconds)
answer = ""
if found:
    future = client.call_async(LoadModel.Request(path="/tmp/attacker-model"))
    executor.spin_until_future_complete(future, timeout_sec=10.0)
    answer = future.result().message if future.done() else ""
end = time.monotonic() + 2.0
while time.monotonic() < end:
    executor.spin_once(timeout_sec=0.1)
cell_subscribers = spoof.get_subscription_count()
print(json.dumps({"found": found, "answer": answer, "cell_subscribers": cell_subscribers,
                  "nodes": sorted(ns + "/" + n for n, ns in node.get_node_names_and_namespaces())}))
context.try_shutdown()
"""


@contextmanager
def other_host() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace name, this host's address there)."""
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    name, outer, inner, net = (
        f"qcatk{tag}",
        f"qa{tag}",
        f"qb{tag}",
        f"10.{random.randrange(200, 250)}.{random.randrange(256)}",
    )

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", name)
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("addr", "add", f"{net}.1/24", "dev", outer)
        ip("link", "set", outer, "up")
        for args in (("addr", "add", f"{net}.2/24", "dev", inner), ("link", "set", inner, "up"),
                     ("link", "set", "lo", "up"), ("route", "add", "default", "via", f"{net}.1")):  # fmt: skip
            ip("netns", "exec", name, "ip", *args)
        yield name, f"{net}.1"
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _base_environment() -> dict[str, str]:
    """This process's environment without any discovery or transport choice: what a fresh shell has."""
    return {k: v for k, v in os.environ.items() if k not in RANGE_VARIABLES + PROFILE_VARIABLES}


@contextmanager
def inference_node(tmp_path: Path, namespace: str, environment: dict[str, str]) -> Iterator[subprocess.Popen]:
    write_package(tmp_path / f"pkg-{namespace}", "1.0.0")
    argv = [sys.executable, "-m", "qc_cell.nodes.inference", "--ros-args", "-r", f"__ns:=/{namespace}",
            "-p", f"model_path:={tmp_path / f'pkg-{namespace}'}", "-p", f"model_store_dir:={tmp_path / namespace}",
            "-p", "backend:=onnxruntime", "-p", "threads:=1"]  # fmt: skip
    log = open(tmp_path / f"{namespace}.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def attack(netns: str, cell_host: str, namespace: str, seconds: float = 8.0) -> dict:
    environment = {**_base_environment(), "ROS_STATIC_PEERS": cell_host}  # a default participant + the address
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", ATTACKER, namespace, str(seconds)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def served_model_versions(namespace: str, environment: dict[str, str], seconds: float) -> list[str]:
    """model/active as the cell itself hears it: a participant of the cell's own configuration on this host."""
    previous = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        with ros_graph() as graph:
            heard: list[ModelInfo] = []
            graph.node("cell_side").create_subscription(
                ModelInfo, f"/{namespace}/model/active", heard.append, qos.LATCHED
            )
            graph.spin_for(seconds)
            return [m.version for m in heard]
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_participant_on_another_host_cannot_reach_the_confined_cell(tmp_path):
    with other_host() as (netns, cell_host):
        # Control: discovery widened on purpose (and the transport with it): the other host reaches the cell.
        widened = {**_base_environment(), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
        open_env = {**widened, **cell_environment("open", widened)}
        assert open_env.get("FASTDDS_DEFAULT_PROFILES_FILE", open_env.get("FASTRTPS_DEFAULT_PROFILES_FILE", ""))
        with inference_node(tmp_path, "open", open_env):
            time.sleep(2.0)
            control = attack(netns, cell_host, "open")
        assert control["found"] and control["answer"], (
            f"the control attack must reach a widened cell, else this test proves nothing: {control}"
        )

        # The shipped configuration: nothing reaches the cell from the other host.
        confined = {**_base_environment(), **cell_environment("cell1", _base_environment())}
        confined["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]  # the attacker knows the domain too
        with inference_node(tmp_path, "cell1", confined):
            time.sleep(2.0)
            result = attack(netns, cell_host, "cell1")
            heard = served_model_versions("cell1", confined, 3.0)
        assert not result["found"] and result["answer"] == "", f"load_model reached from another host: {result}"
        assert result["cell_subscribers"] == 0 and "/cell1/inference" not in result["nodes"], result
        assert "1.0.0" in heard, f"the cell's own participants still hear model/active: {heard}"
        assert "999" not in heard, f"a model/active from another host reached the cell: {heard}"
