"""The nodes of one inspection cell: the single list read by launch/inspection_cell.launch.py and by
the cell runner (qc_cell.runner) for machines without `ros2 launch`. Node names are also the keys of
the params files (params/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node name, and its key in the params YAML
    executable: str  # console script of package qc_cell (`ros2 run qc_cell <executable>`)
    lifecycle: bool  # managed node: configured and activated by launch/runner
    respawn: bool  # restarted when it dies (the line keeps running)
    enabled_by: str | None = None  # launch argument / runner option that turns the node on; None = always

    @property
    def module(self) -> str:
        """Module with main(), for `python -m` where console scripts are not installed."""
        return f"qc_cell.nodes.{self.executable}"


# Environment every node process of the cell gets (launch file and runner alike), e.g. the DDS transport
# settings chosen by the image-transport benchmark (see docs/graph-contract.md).
ENVIRONMENT: dict[str, str] = {}

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("camera_driver", "camera_driver", lifecycle=True, respawn=True),
    NodeSpec("inference", "inference", lifecycle=False, respawn=True),
    NodeSpec("sensor_fusion", "sensor_fusion", lifecycle=False, respawn=True),
    NodeSpec("decision", "decision", lifecycle=False, respawn=True),
    NodeSpec("reject_actuator", "reject_actuator", lifecycle=True, respawn=True),
    NodeSpec("cloud_bridge", "cloud_bridge", lifecycle=False, respawn=True, enabled_by="use_bridge"),
    NodeSpec("process_simulator", "process_simulator", lifecycle=False, respawn=True, enabled_by="use_process_sim"),
    NodeSpec("arm_server", "arm_server", lifecycle=False, respawn=True, enabled_by="use_arm_sim"),
)


def node(name: str) -> NodeSpec:
    for spec in NODES:
        if spec.name == name:
            return spec
    raise KeyError(f"no node named {name!r} in the cell graph")
