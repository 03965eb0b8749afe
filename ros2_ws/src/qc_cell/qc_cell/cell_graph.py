"""The nodes of one inspection cell: the single list read by launch/inspection_cell.launch.py and by
the cell runner (qc_cell.bringup.cell_runner) for machines without `ros2 launch`. Node names are also the keys of
the params files (params/*.yaml)."""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node name, and its key in the params YAML
    executable: str  # console script of package qc_cell (`ros2 run qc_cell <executable>`)
    lifecycle: bool  # managed node: configured and activated by launch/runner
    respawn: bool  # restarted when it dies (the line keeps running)
    enabled_by: str | None = None  # launch argument / runner option that turns the node on; None = always
    part_source: bool = False  # parts enter the cell here: activated last, once every other node is listening
    # Stands in for plant equipment (process sensors, robot arm): runs only when its flag is explicitly true, never
    # on `auto`, and only with a params file that declares itself a demo (qc_cell.bringup.params_file.check_demo).
    simulator: bool = False

    @property
    def module(self) -> str:
        """Module with main(), for `python -m` where console scripts are not installed."""
        return f"qc_cell.nodes.{self.executable}"


# Environment every node process of the cell gets (launch file and runner alike), e.g. the DDS transport
# settings chosen by the image-transport benchmark (see docs/graph-contract.md), and the graph's confinement
# (docs/security.md): discovery and transport stay on this host unless the operator widened them on purpose.
_CAMERA = Path(__file__).resolve().parent / "camera"
# Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3 (Kilted on) FASTDDS_..., and
# warns about the old name in every process.
_DISTRO = os.environ.get("ROS_DISTRO", "")
PROFILE_VARIABLE = (
    "FASTRTPS_DEFAULT_PROFILES_FILE" if _DISTRO in ("humble", "iron", "jazzy") else "FASTDDS_DEFAULT_PROFILES_FILE"
)
# Big image buffers from the reused heap instead of fresh (page-faulting) mmaps for every message; merged with any
# GLIBC_TUNABLES already set (e.g. the Jetson's glibc.rtld.optional_static_tls for libgomp).
_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"


def _localhost_only_distro(distro: str) -> bool:
    """Humble and Iron know ROS_LOCALHOST_ONLY; Jazzy on ROS_AUTOMATIC_DISCOVERY_RANGE (the other deprecated)."""
    return distro in ("humble", "iron")


def network_wide(environ: Mapping[str, str], distro: str = _DISTRO) -> bool:
    """True when the operator widened discovery beyond this host on purpose (ROS_LOCALHOST_ONLY=0 on Humble/Iron,
    ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET or SYSTEM_DEFAULT from Jazzy on): then the transport listens on every
    interface too."""
    if _localhost_only_distro(distro):
        return environ.get("ROS_LOCALHOST_ONLY", "").strip() == "0"
    return environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip().upper() in ("SUBNET", "SYSTEM_DEFAULT")


def confinement(environ: Mapping[str, str], distro: str = _DISTRO) -> dict[str, str]:
    """Discovery on this host only, unless the operator set it: ROS_LOCALHOST_ONLY=1 on Humble and Iron,
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST from Jazzy on (where ROS_LOCALHOST_ONLY is deprecated)."""
    if _localhost_only_distro(distro):
        return {} if environ.get("ROS_LOCALHOST_ONLY", "").strip() else {"ROS_LOCALHOST_ONLY": "1"}
    return (
        {}
        if environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip()
        else {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    )


def domain_id(namespace: str, environ: Mapping[str, str]) -> str:
    """The cell's ROS_DOMAIN_ID: the environment's if set, else one derived from the cell's namespace (1..100,
    never the default 0 that every other ROS installation joins). Two cells on one host: set it explicitly if
    their derived ids collide."""
    given = environ.get("ROS_DOMAIN_ID", "").strip()
    if given:
        return given
    return str(1 + zlib.crc32(namespace.strip("/").encode()) % 100)


def graph_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The transport and discovery settings of the cell's processes, given the environment they start from."""
    profile = "fastdds_large_images_network.xml" if network_wide(environ) else "fastdds_large_images.xml"
    return {
        # Image transport, chosen with bench/bench_image_transport.py (docs/camera.md): UDPv4 + shared memory with
        # a 32 MB segment, which holds the fragments of several camera frames, and the malloc thresholds above.
        # 1280x720 hop on a 2-core machine: ~2.5 ms, against ~36 ms with the defaults or LARGE_DATA. UDPv4 on the
        # loopback interface only unless discovery was widened (network_wide): ROS_AUTOMATIC_DISCOVERY_RANGE=
        # LOCALHOST alone still answers a peer on the plant network that names this host as a static peer.
        PROFILE_VARIABLE: str(_CAMERA / profile),
        "GLIBC_TUNABLES": ":".join(filter(None, (environ.get("GLIBC_TUNABLES"), _MALLOC_TUNABLES))),
        **confinement(environ),
    }


def cell_environment(namespace: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Everything a process of this cell (node, runner, healthcheck) needs in its environment to join it."""
    return {**graph_environment(environ), "ROS_DOMAIN_ID": domain_id(namespace, environ)}


def enclave_arguments(namespace: str, node: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """`--enclave /<namespace>/<node>` (ROS arguments) when SROS2 is on (ROS_SECURITY_ENABLE=true), else nothing:
    each node of the cell in its own enclave of the keystore (docs/security.md)."""
    if environ.get("ROS_SECURITY_ENABLE", "").strip().lower() != "true":
        return []
    return ["--enclave", "/" + "/".join(p for p in (*namespace.strip("/").split("/"), node) if p)]


# The environment every node process gets from this process's environment (launch file and runner alike).
ENVIRONMENT: dict[str, str] = graph_environment(os.environ)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("camera_driver", "camera_driver", lifecycle=True, respawn=True, part_source=True),
    NodeSpec("inference", "inference", lifecycle=False, respawn=True),
    NodeSpec("sensor_fusion", "sensor_fusion", lifecycle=False, respawn=True),
    NodeSpec("decision", "decision", lifecycle=False, respawn=True),
    NodeSpec("reject_actuator", "reject_actuator", lifecycle=True, respawn=True),
    NodeSpec("cloud_bridge", "cloud_bridge", lifecycle=False, respawn=True, enabled_by="use_bridge"),
    NodeSpec(
        "process_simulator",
        "process_simulator",
        lifecycle=False,
        respawn=True,
        enabled_by="use_process_sim",
        simulator=True,
    ),
    NodeSpec("arm_server", "arm_server", lifecycle=False, respawn=True, enabled_by="use_arm_sim", simulator=True),
)


def node(name: str) -> NodeSpec:
    for spec in NODES:
        if spec.name == name:
            return spec
    raise KeyError(f"no node named {name!r} in the cell graph")


if __name__ == "__main__":  # docker/entrypoint.sh: `python3 -m qc_cell.cell_graph environment NAMESPACE`
    if len(sys.argv) != 3 or sys.argv[1] != "environment":
        raise SystemExit("usage: python -m qc_cell.cell_graph environment NAMESPACE  (NAME=value lines)")
    for name, value in {"ROS_DOMAIN_ID": domain_id(sys.argv[2], os.environ), **confinement(os.environ)}.items():
        print(f"{name}={value}")
