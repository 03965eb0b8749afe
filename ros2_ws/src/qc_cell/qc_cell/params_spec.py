"""Parameter specs: each node's parameters written once (name, type, default, description, range, choices,
read-only or runtime-changeable), ROS-free.

A capability's spec lives next to its core (qc_cell/<capability>/params.py). The node declares every parameter
from it and validates runtime changes against it (qc_cell.ros.params), the reference in docs/parameters.md is
generated from it (qc_cell.tools.param_docs), and a test checks the params files against it. The idea is
generate_parameter_library's (one definition, declaration, validation and docs derived), in plain Python.
"""

from __future__ import annotations

import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# ROS 2 parameter types by their ros2 param names.
SCALAR_TYPES: dict[str, type | tuple[type, ...]] = {"bool": bool, "int": int, "double": float, "string": str}
TYPES = (*SCALAR_TYPES, *(f"{name}_array" for name in SCALAR_TYPES))


def type_of(value: Any) -> str:
    """The ROS parameter type of a default value (bool before int: a bool is an int in Python)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise TypeError("an empty list has no parameter type: give Param(type=...)")
        element = {type_of(v) for v in value}
        if len(element) != 1 or next(iter(element)).endswith("_array"):
            raise TypeError(f"list {value!r} mixes types or nests lists")
        return f"{element.pop()}_array"
    for name, python_type in SCALAR_TYPES.items():
        if isinstance(value, python_type):
            return name
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a parameter value")


def _is_scalar(value: Any, type_name: str) -> bool:
    if type_name in ("int", "double") and isinstance(value, bool):
        return False
    return isinstance(value, SCALAR_TYPES[type_name])


@dataclass(frozen=True)
class Param:
    """One parameter. `default` None means: no default, declared by type and unset unless given (`type` needed).
    `runtime` True means a change at run time is validated and applied by the node; otherwise read-only."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive, numeric parameters only
    choices: tuple[str, ...] | None = None  # string (or each string of a string_array)
    runtime: bool = False
    type: str = ""  # inferred from default when empty

    def __post_init__(self) -> None:
        if isinstance(self.default, list):
            object.__setattr__(self, "default", tuple(self.default))
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if not self.type:
            if self.default is None:
                raise TypeError(f"parameter {self.name}: no default, so give its type")
            object.__setattr__(self, "type", type_of(self.default))
        if self.type not in TYPES:
            raise TypeError(f"parameter {self.name}: type {self.type!r} is not one of {TYPES}")
        if not self.description.strip():
            raise ValueError(f"parameter {self.name} has no description")
        if self.range is not None and self.type not in ("int", "double"):
            raise TypeError(f"parameter {self.name}: a range needs an int or double parameter, not {self.type}")
        if self.choices is not None and self.type not in ("string", "string_array"):
            raise TypeError(f"parameter {self.name}: choices need a string parameter, not {self.type}")
        if self.default is not None:
            self.check(self.default)

    @property
    def read_only(self) -> bool:
        return not self.runtime

    def check(self, value: Any) -> None:
        """ValueError naming the parameter when value has the wrong type, is out of range or not a choice."""
        if self.type.endswith("_array"):
            element = self.type.removesuffix("_array")
            if not isinstance(value, (list, tuple, array.array)) or not all(_is_scalar(v, element) for v in value):
                raise ValueError(f"parameter '{self.name}' = {value!r} must be a list of {element}: {self.description}")
            values = list(value)
        else:
            if not _is_scalar(value, self.type):
                raise ValueError(f"parameter '{self.name}' = {value!r} must be a {self.type}: {self.description}")
            values = [value]
        if self.range is not None and not (self.range[0] <= value <= self.range[1]):
            raise ValueError(
                f"parameter '{self.name}' = {value!r} is outside [{self.range[0]}, {self.range[1]}]: {self.description}"
            )
        if self.choices is not None and any(v not in self.choices for v in values):
            raise ValueError(
                f"parameter '{self.name}' = {value!r} must be one of {list(self.choices)}: {self.description}"
            )


@dataclass(frozen=True)
class NodeParams:
    """All parameters of one node. `in_params_file` False: set by the launch file, not by params/*.yaml."""

    node: str
    summary: str
    params: tuple[Param, ...]
    in_params_file: bool = True
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {p.name: p for p in self.params}
        if len(by_name) != len(self.params):
            duplicates = sorted({p.name for p in self.params if sum(q.name == p.name for q in self.params) > 1})
            raise ValueError(f"node {self.node}: parameters declared twice: {duplicates}")
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> Param:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def runtime_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.runtime)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check_values(self, values: dict[str, Any]) -> list[str]:
        """Problems with a params-file section: unknown names and values the spec refuses (empty = fine)."""
        problems = []
        for name, value in values.items():
            if name not in self:
                problems.append(f"{self.node}: unknown parameter {name!r}")
                continue
            try:
                self[name].check(value)
            except ValueError as exc:
                problems.append(f"{self.node}: {exc}")
        return problems
