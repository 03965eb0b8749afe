"""The cell_manager node's parameters (spec: qc_cell.params_spec); set by the launch file, not by params/*.yaml."""

from __future__ import annotations

from qc_cell.params_spec import NodeParams, Param

CELL_MANAGER = NodeParams(
    "cell_manager",
    "under ros2 launch: brings the lifecycle nodes to ACTIVE in order and keeps them there after respawns",
    (
        Param("nodes", [""], "names of the cell's nodes (from the launch file)"),
        Param(
            "ready_timeout_s",
            20.0,
            "longest wait for the model, fresh process signals and matched inputs before the part source starts",
            range=(0.0, 600.0),
        ),
    ),
    in_params_file=False,
)
