"""Every node's parameter spec (qc_cell.params_spec), in the cell graph's order: what the docs generator and the
params-file tests read. Each spec lives next to its capability's core."""

from __future__ import annotations

import importlib

from qc_cell.params_spec import NodeParams

# Module of each node's spec, by node name.
SPEC_MODULES: dict[str, tuple[str, str]] = {
    "camera_driver": ("qc_cell.camera.params", "CAMERA_DRIVER"),
    "inference": ("qc_cell.inference.params", "INFERENCE"),
    "sensor_fusion": ("qc_cell.fusion.params", "SENSOR_FUSION"),
    "decision": ("qc_cell.decision.params", "DECISION"),
    "reject_actuator": ("qc_cell.reject.params", "REJECT_ACTUATOR"),
    "cloud_bridge": ("qc_cell.bridge.params", "CLOUD_BRIDGE"),
    "process_simulator": ("qc_cell.fusion.params", "PROCESS_SIMULATOR"),
    "arm_server": ("qc_cell.reject.params", "ARM_SERVER"),
    "cell_manager": ("qc_cell.bringup.manager_params", "CELL_MANAGER"),
}


def spec(node: str) -> NodeParams:
    """The spec of one node (KeyError for a node without parameters)."""
    module, name = SPEC_MODULES[node]
    result = getattr(importlib.import_module(module), name)
    if result.node != node:
        raise RuntimeError(f"{module}.{name} is the spec of {result.node}, not {node}")
    return result


def all_specs() -> list[NodeParams]:
    return [spec(node) for node in SPEC_MODULES]
