"""The nodes of one inspection cell: the single list read by launch/inspection_cell.launch.py and by
the cell runner (qc_cell.bringup.cell_runner) for machines without `ros2 launch`. Node names are also the keys of
the params files (params/*.yaml)."""

from __future__ import annotations

import os
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
# settings chosen by the image-transport benchmark (see docs/graph-contract.md).
_FASTDDS_PROFILE = str(Path(__file__).resolve().parent / "camera" / "fastdds_large_images.xml")
# Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3 (Kilted on) FASTDDS_..., and
# warns about the old name in every process.
PROFILE_VARIABLE = (
    "FASTRTPS_DEFAULT_PROFILES_FILE"
    if os.environ.get("ROS_DISTRO") in ("humble", "iron", "jazzy")
    else "FASTDDS_DEFAULT_PROFILES_FILE"
)
# Big image buffers from the reused heap instead of fresh (page-faulting) mmaps for every message; merged with any
# GLIBC_TUNABLES already set (e.g. the Jetson's glibc.rtld.optional_static_tls for libgomp).
_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"
ENVIRONMENT: dict[str, str] = {
    # Image transport, chosen with bench/bench_image_transport.py (docs/camera.md): UDPv4 + shared memory with a
    # 32 MB segment, which holds the fragments of several camera frames, and the malloc thresholds above.
    # 1280x720 hop on a 2-core machine: ~2.5 ms, against ~36 ms with the defaults or LARGE_DATA.
    PROFILE_VARIABLE: _FASTDDS_PROFILE,
    "GLIBC_TUNABLES": ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), _MALLOC_TUNABLES))),
}

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
