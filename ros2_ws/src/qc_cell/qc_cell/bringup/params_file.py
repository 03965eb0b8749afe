"""Read a cell params file (keyed by node name, then ros__parameters) and produce what each node process
gets: the base file with its overlays merged, relative paths resolved, overrides applied, derived values
filled in and the cross-node rules checked, then re-keyed under the cell's namespace.

Used by the cell runner, by launch/inspection_cell.launch.py and by docker/params_overlay.py, so all three
interpret a params file the same way.

- **Base and overlays.** A params file whose top level has `extends: <file>` is an overlay: the parameters of
  that file (relative to the overlay's folder), with the overlay's values replacing the base's. An overlay may
  extend another overlay. The root of the chain (params/cell.yaml) lists every parameter of every node, so an
  overlay or an override naming a parameter the base lacks is an error, not a silently ignored value.
- **Paths.** A relative path in a path parameter (PATH_PARAMETERS) resolves against the folder of the file that
  sets it; one given as an override resolves against the current directory.
- **Demo or production.** A params file whose chain says `demo: true` at the top level (params/demo.yaml) is a
  demo. Only a demo may run simulated equipment: the simulator nodes (process_simulator, arm_server, each only when
  its flag is explicitly true, never on `auto`), the sim ejector or the synthetic camera (check_demo). Records from
  simulated inputs are marked as such (simulated_inputs, sent with the cloud records).
- **State.** `$(var state_dir)` in a value is the run's state folder (runner `--state-dir`, launch argument
  `state_dir`; by default a new folder per run), substituted by `with_state_dir`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from qc_cell.bringup import params_rules
from qc_cell.bringup.params_rules import ParamsFileError  # every error of a params file, rules included
from qc_cell.cell_graph import NODES, NodeSpec

EXTENDS = "extends"
DEMO = "demo"
STATE_DIR = "$(var state_dir)"

# Launch/runner arguments that map onto one node's parameter.
ARGUMENT_PARAMETERS: dict[str, tuple[str, str]] = {
    "backend": ("inference", "backend"),
    "source": ("camera_driver", "source"),
}

# Parameters that name a file or folder. A relative value resolves against the folder of the params file that
# sets it, so a cell starts the same from any working directory. update_public_keys is a comma-separated list.
PATH_PARAMETERS: dict[str, frozenset[str]] = {
    "camera_driver": frozenset({"path", "state_dir"}),
    "reject_actuator": frozenset({"journal_path"}),
    "inference": frozenset(
        {"model_path", "model_store_dir", "engine_cache_dir", "engine_key_file", "int8_calibration_dir"}
    ),
    "cloud_bridge": frozenset(
        {
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "password_file",
            "outbox_path",
            "update_dir",
            "update_public_keys",
            "update_revoked_keys_file",
            "model_store_dir",
            "https_ca_file",
        }
    ),
}
_PATH_LISTS = {("cloud_bridge", "update_public_keys")}


NODE_NAMES = tuple(spec.name for spec in NODES)


class OverrideError(ParamsFileError):
    """An override is not node.param=value, names an unknown node or parameter, or its value is not a scalar."""


# ---- reading and merging ----------------------------------------------------------------------------------------
def _read(path: Path) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """(base it extends or None, node -> parameters) of one file, its relative paths resolved."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsFileError(f"params file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ParamsFileError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsFileError(f"params file {path}: top level must map node names to their parameters")
    base = data.pop(EXTENDS, None)
    demo = data.pop(DEMO, None)
    if demo is not None and not isinstance(demo, bool):
        raise ParamsFileError(f"params file {path}: '{DEMO}' is true (a demo, may simulate equipment) or false")
    if base is not None and (not isinstance(base, str) or not base):
        raise ParamsFileError(f"params file {path}: '{EXTENDS}' names the base params file, e.g. cell.yaml")
    params: dict[str, dict[str, Any]] = {}
    for node, section in data.items():
        node_name = str(node).rsplit("/", 1)[-1]
        if node_name not in NODE_NAMES:
            raise ParamsFileError(f"params file {path}: unknown node {node!r} (known: {sorted(NODE_NAMES)})")
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ParamsFileError(f"params file {path}: {node!r} needs a 'ros__parameters' mapping")
        values = section["ros__parameters"] or {}
        if not isinstance(values, dict):
            raise ParamsFileError(f"params file {path}: {node!r} ros__parameters must be a mapping")
        params[node_name] = {name: resolve_path(node_name, name, value, path.parent) for name, value in values.items()}
    return (path.parent / base if base else None), params


def _chain(path: Path) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
    """The files from the root base to `path`, each with its parameters."""
    chain: list[tuple[Path, dict[str, dict[str, Any]]]] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        key = current.resolve()
        if key in seen:
            raise ParamsFileError(f"params file {path}: '{EXTENDS}' loops back to {current}")
        seen.append(key)
        base, params = _read(current)
        chain.append((current, params))
        current = base
    return chain[::-1]


def _known(chain: list[tuple[Path, dict[str, dict[str, Any]]]]) -> dict[str, frozenset[str]]:
    root = chain[0][1]
    return {node: frozenset(root.get(node, {})) for node in NODE_NAMES}


def is_demo(path: str | Path) -> bool:
    """Whether the params file declares itself a demo (`demo: true`, in it or the nearest file of its chain that
    says); production otherwise."""
    for file, _ in reversed(_chain(Path(path))):
        data = yaml.safe_load(file.read_text())
        if data.get(DEMO) is not None:
            return bool(data[DEMO])
    return False


# ---- simulated equipment ----------------------------------------------------------------------------------------
SIMULATED_DRIVER = ("reject_actuator", "driver", "sim")
SIMULATED_CAMERA = ("camera_driver", "source", "synthetic")


def simulated_inputs(params: Mapping[str, Mapping[str, Any]], nodes: Iterable[NodeSpec]) -> list[str]:
    """What of the cell is simulated with these params and nodes: process_sensors (process_simulator),
    robot_arm (the reference arm_server as the ejector), ejector (sim driver), camera (synthetic parts)."""
    names = {spec.name for spec in nodes}
    driver = params.get("reject_actuator", {}).get("driver")
    simulated = []
    if "process_simulator" in names:
        simulated.append("process_sensors")
    if "arm_server" in names and driver == "robot_arm":
        simulated.append("robot_arm")
    if driver == SIMULATED_DRIVER[2]:
        simulated.append("ejector")
    if params.get("camera_driver", {}).get("source") == SIMULATED_CAMERA[2]:
        simulated.append("camera")
    return simulated


def check_demo(
    params: Mapping[str, Mapping[str, Any]], nodes: Iterable[NodeSpec], demo: bool, where: str | Path
) -> None:
    """A production params file (no `demo: true`) that would run simulated equipment is refused: fake sensors or a
    fake ejector on a real line mask every real fault."""
    if demo:
        return
    simulated = [spec.name for spec in nodes if spec.simulator]
    for node, name, value in (SIMULATED_DRIVER, SIMULATED_CAMERA):
        if params.get(node, {}).get(name) == value:
            simulated.append(f"{node}.{name}={value}")
    if simulated:
        raise ParamsFileError(
            f"params file {where} is a production file (no '{DEMO}: true') but enables simulated equipment: "
            f"{', '.join(simulated)}; use a demo params file (params/demo.yaml) or the real equipment"
        )


def with_simulated_inputs(params: Mapping[str, Mapping[str, Any]], nodes: Iterable[NodeSpec]) -> dict[str, dict]:
    """The params with cloud_bridge.simulated_inputs set to what these nodes and params simulate (the cloud records
    carry it)."""
    nodes = list(nodes)
    result = {node: dict(values) for node, values in params.items()}
    if "cloud_bridge" in result:
        result["cloud_bridge"]["simulated_inputs"] = ",".join(simulated_inputs(params, nodes))
    return result


def known_parameters(path: str | Path) -> dict[str, frozenset[str]]:
    """node -> the parameters it has: the keys of the root base file of `path` (which lists them all)."""
    return _known(_chain(Path(path)))


def _check_known(node: str, name: str, known: Mapping[str, frozenset[str]], where: str) -> None:
    if node not in NODE_NAMES:
        raise OverrideError(f"{where}: unknown node {node!r} (the cell's nodes: {', '.join(NODE_NAMES)})")
    if name in known.get(node, ()):
        return
    derived_from = params_rules.DERIVED.get((node, name))
    if derived_from:
        raise OverrideError(f"{where}: {node}.{name} is derived from {'.'.join(derived_from)}: set that instead")
    close = difflib.get_close_matches(name, known.get(node, ()), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise OverrideError(f"{where}: {node} has no parameter {name!r} (not in the base params file){hint}")


def load(
    path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None, *, check: bool = True
) -> dict[str, dict[str, Any]]:
    """node name -> parameters of a params file (its overlay chain merged onto the base), with `overrides`
    applied; derived parameters filled in and the cross-node rules checked unless `check` is false.

    Raises ParamsFileError with a one-line message: unknown node or parameter, bad shape, broken rule."""
    path = Path(path)
    chain = _chain(path)
    known = _known(chain)
    merged: dict[str, dict[str, Any]] = {}
    for file, params in chain:
        for node, values in params.items():
            if file != chain[0][0]:
                for name in values:
                    _check_known(node, name, known, f"params file {file}")
            merged.setdefault(node, {}).update(values)
    for node, values in (overrides or {}).items():
        for name, value in values.items():
            _check_known(node, name, known, f"override {node}.{name}")
            merged.setdefault(node, {})[name] = resolve_path(node, name, value, Path.cwd())
    if check:
        merged = params_rules.derive(merged)
        params_rules.check(merged)
    return merged


def resolve_path(node: str, name: str, value: Any, folder: Path) -> Any:
    """A path parameter's relative value made absolute against `folder`; other values unchanged."""
    if name not in PATH_PARAMETERS.get(node, ()) or not isinstance(value, str):
        return value
    if (node, name) in _PATH_LISTS:
        return ",".join(_absolute(item.strip(), folder) for item in value.split(",")) if value.strip() else value
    return _absolute(value, folder)


def _absolute(value: str, folder: Path) -> str:
    if not value or value.startswith(("/", "~", "$(")):
        return value
    return os.path.normpath(folder.resolve() / value)


# ---- overrides (runner --set, container QC_SET) and launch/runner arguments ----------------------------------------
def parse_override(item: str, known: Mapping[str, frozenset[str]] | None = None) -> tuple[str, str, Any]:
    """`node.param=value` -> (node, param, value); the value is a YAML scalar or flat list (`5`, `true`, `"5"`).
    The node must be one of the cell's; with `known` (known_parameters()), the parameter must be one of its."""
    key, sep, raw = item.partition("=")
    node, dot, parameter = key.strip().partition(".")
    if not sep or not dot or not node or not parameter:
        raise OverrideError(f"override {item!r}: expected node.parameter=value")
    if known is not None:
        _check_known(node, parameter, known, f"override {item!r}")
    elif node not in NODE_NAMES:
        raise OverrideError(f"override {item!r}: unknown node {node!r} (the cell's nodes: {', '.join(NODE_NAMES)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise OverrideError(f"override {item!r}: value is not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
        raise OverrideError(f"override {item!r}: a parameter value is a scalar or a flat list")
    return node, parameter, value


def parse_overrides(
    items: Iterable[str], known: Mapping[str, frozenset[str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Several `node.param=value` items -> node -> {param: value}; a later item wins."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        node, parameter, value = parse_override(item, known)
        overrides.setdefault(node, {})[parameter] = value
    return overrides


def argument_overrides(arguments: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Launch/runner arguments (backend, source, ...) that are set (not None or "") as node parameter overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for argument, value in arguments.items():
        if value in (None, "") or argument not in ARGUMENT_PARAMETERS:
            continue
        node, parameter = ARGUMENT_PARAMETERS[argument]
        overrides.setdefault(node, {})[parameter] = value
    return overrides


def parse_flag(value: str) -> bool | None:
    """A node flag (use_bridge, ...): true/false (also 1/0, yes/no, on/off) or auto (None)."""
    lowered = value.strip().lower()
    if lowered == "auto":
        return None
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true, false or auto")


# ---- the run's state folder -------------------------------------------------------------------------------------
def uses_state_dir(params: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(isinstance(v, str) and STATE_DIR in v for values in params.values() for v in values.values())


def with_state_dir(params: Mapping[str, Mapping[str, Any]], state_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`$(var state_dir)` in every value replaced by the run's state folder."""
    folder = str(state_dir)
    return {
        node: {k: v.replace(STATE_DIR, folder) if isinstance(v, str) else v for k, v in values.items()}
        for node, values in params.items()
    }


# ---- writing ------------------------------------------------------------------------------------------------------
def to_yaml(params: Mapping[str, Mapping[str, Any]], header: str = "", *, demo: bool = False) -> str:
    """A complete params file (node -> ros__parameters) of merged params; derived parameters are left out, so
    the file loads again as it was configured. `demo`: the file says `demo: true` (merged from a demo file)."""
    body: dict[str, Any] = {DEMO: True} if demo else {}
    body |= {
        node: {"ros__parameters": {k: v for k, v in values.items() if (node, k) not in params_rules.DERIVED}}
        for node, values in params.items()
    }
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def fully_qualified(namespace: str, node: str) -> str:
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{namespace}/{node}"


def node_params_yaml(namespace: str, node: str, values: Mapping[str, Any]) -> str:
    """The params YAML for one node process, keyed by its fully qualified name (so namespaces work)."""
    return yaml.safe_dump({fully_qualified(namespace, node): {"ros__parameters": dict(values)}}, sort_keys=False)
