"""Read a cell params file (keyed by node name, then ros__parameters) and produce what each node process
gets: the same YAML, re-keyed under the cell's namespace, with command-line overrides applied.

Used by the cell runner and by launch/inspection_cell.launch.py, so both interpret a params file the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from qc_cell.cell_graph import NODES

# Launch/runner arguments that map onto one node's parameter.
ARGUMENT_PARAMETERS: dict[str, tuple[str, str]] = {
    "backend": ("inference", "backend"),
    "source": ("camera_driver", "source"),
}


class ParamsFileError(ValueError):
    """The params file is missing, not YAML, or not shaped as node -> ros__parameters -> values."""


def load(path: str | Path) -> dict[str, dict[str, Any]]:
    """node name -> parameters, validated against the cell graph's node names."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsFileError(f"params file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ParamsFileError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsFileError(f"params file {path}: top level must map node names to their parameters")
    known = {spec.name for spec in NODES}
    params: dict[str, dict[str, Any]] = {}
    for node, section in data.items():
        node_name = str(node).rsplit("/", 1)[-1]
        if node_name not in known:
            raise ParamsFileError(f"params file {path}: unknown node {node!r} (known: {sorted(known)})")
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ParamsFileError(f"params file {path}: {node!r} needs a 'ros__parameters' mapping")
        values = section["ros__parameters"] or {}
        if not isinstance(values, dict):
            raise ParamsFileError(f"params file {path}: {node!r} ros__parameters must be a mapping")
        params[node_name] = values
    return params


def apply_arguments(params: Mapping[str, dict[str, Any]], arguments: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply launch/runner arguments (backend, source, ...) that are set (not None or "") onto the params."""
    result = {node: dict(values) for node, values in params.items()}
    for argument, value in arguments.items():
        if value in (None, "") or argument not in ARGUMENT_PARAMETERS:
            continue
        node, parameter = ARGUMENT_PARAMETERS[argument]
        result.setdefault(node, {})[parameter] = value
    return result


def fully_qualified(namespace: str, node: str) -> str:
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{namespace}/{node}"


def node_params_yaml(namespace: str, node: str, values: Mapping[str, Any]) -> str:
    """The params YAML for one node process, keyed by its fully qualified name (so namespaces work)."""
    return yaml.safe_dump({fully_qualified(namespace, node): {"ros__parameters": dict(values)}}, sort_keys=False)
