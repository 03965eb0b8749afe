"""Parameter specs (qc_cell.params_spec): the spec type itself, and that the params files and the generated
reference (docs/parameters.md) agree with the specs. Plain pytest, no ROS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from qc_cell.bringup.params_rules import DERIVED
from qc_cell.cell_graph import NODES
from qc_cell.cell_params import all_specs, spec
from qc_cell.params_spec import NodeParams, Param
from qc_cell.tools import param_docs

REPO = Path(__file__).resolve().parents[4]
CELL_YAML = REPO / "params" / "cell.yaml"
PARAMS_FILES = sorted((REPO / "params").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------- the spec type


def test_types_are_inferred_from_defaults():
    assert [Param(n, v, "d").type for n, v in [("a", True), ("b", 3), ("c", 0.5), ("d", "x"), ("e", ["x"])]] == [
        "bool",
        "int",
        "double",
        "string",
        "string_array",
    ]
    assert Param("f", None, "unset until given", type="string_array").default is None
    with pytest.raises(TypeError, match="give its type"):
        Param("g", None, "no type")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "is outside \\[0.0, 1.0\\]"),
        (1, "must be a double"),
        (True, "must be a double"),
    ],
)
def test_check_refuses_wrong_type_and_range_naming_the_parameter(value, message):
    with pytest.raises(ValueError, match=f"parameter 'threshold' = .*{message}"):
        Param("threshold", 0.5, "p", range=(0.0, 1.0)).check(value)


def test_choices_are_checked_for_strings_and_each_element_of_string_arrays():
    Param("mode", "a", "m", choices=("a", "b")).check("b")
    with pytest.raises(ValueError, match="must be one of \\['a', 'b'\\]"):
        Param("mode", "a", "m", choices=("a", "b")).check("c")
    with pytest.raises(ValueError, match="must be one of"):
        Param("modes", ["a"], "m", choices=("a", "b")).check(["a", "z"])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"description": " "}, "no description"),
        ({"default": 2.0, "range": (0.0, 1.0)}, "outside"),
        ({"default": "x", "range": (0.0, 1.0)}, "range needs"),
        ({"default": "x", "choices": ("y",)}, "must be one of"),
    ],
)
def test_a_spec_that_contradicts_itself_fails_where_it_is_written(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        Param(**{"name": "p", "default": 0.5, "description": "d", **kwargs})


def test_a_parameter_declared_twice_is_refused():
    with pytest.raises(ValueError, match="declared twice"):
        NodeParams("n", "s", (Param("a", 1, "d"), Param("a", 2, "d")))


# ---------------------------------------------------------------------------------------------- specs vs files


def test_every_node_of_the_cell_has_a_spec_and_every_parameter_a_description():
    assert {s.node for s in all_specs()} >= {n.name for n in NODES}
    for node_spec in all_specs():
        undocumented = [p.name for p in node_spec if not p.description.strip()]
        assert not undocumented, f"{node_spec.node}: parameters without description: {undocumented}"


def test_the_committed_reference_is_generated_from_the_specs():
    committed = (REPO / "docs" / "parameters.md").read_text()
    assert committed == param_docs.render(), (
        "docs/parameters.md differs from the parameter specs: run `python -m qc_cell.tools.param_docs` "
        "from the repository root and commit the result"
    )


def _sections(path: Path) -> dict[str, dict]:
    data = yaml.safe_load(path.read_text()) or {}
    return {
        str(node).rsplit("/", 1)[-1]: section.get("ros__parameters") or {}
        for node, section in data.items()
        if isinstance(section, dict) and "ros__parameters" in section
    }


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_parameter_in_a_params_file_is_in_its_spec_with_a_valid_value(path):
    problems = []
    for node, values in _sections(path).items():
        problems += spec(node).check_values(values)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_cell_yaml_sets_every_parameter_of_every_spec():
    sections = _sections(CELL_YAML)
    text = CELL_YAML.read_text()
    missing = []
    for node_spec in all_specs():
        if not node_spec.in_params_file:
            continue
        for param in node_spec:
            if param.name in sections.get(node_spec.node, {}):
                continue
            # Derived at load time from another node's parameter (configured once, there).
            if (node_spec.node, param.name) in DERIVED:
                continue
            # A parameter without default (unset = off) is shown commented out, with its explanation.
            if param.default is None and re.search(rf"^\s*#\s*{param.name}:", text, re.MULTILINE):
                continue
            missing.append(f"{node_spec.node}.{param.name}")
    assert not missing, f"params/cell.yaml lacks {missing} (the base params file sets every parameter)"


PARAMETER_LINE = re.compile(r"^(\s+)([A-Za-z_][A-Za-z0-9_]*):\s*(\S.*)?$")


def _has_comment(value: str) -> bool:
    """Whether a YAML value is followed by a comment (a # after white space, outside quotes)."""
    quote = ""
    for i, char in enumerate(value):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or value[i - 1] in " \t"):
            return True
    return False


def uncommented_parameters(text: str) -> list[str]:
    """Parameter lines (under ros__parameters) that have neither a comment on their line nor a comment line directly
    above their block (consecutive parameter lines without comments of their own share the comment above them)."""
    result = []
    node, covered = "", False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            covered = False
            continue
        if stripped.startswith("#"):
            covered = True
            continue
        match = PARAMETER_LINE.match(line)
        if not line.startswith(" "):
            node, covered = stripped.rstrip(":"), False
            continue
        if match is None or match.group(2) == "ros__parameters" or match.group(3) is None:
            covered = False
            continue
        if _has_comment(match.group(3)):
            covered = False  # its own comment: the next line is not covered by it
            continue
        if not covered:
            result.append(f"{node}.{match.group(2)}")
    return result


def test_uncommented_parameters_are_found():
    text = (
        "n:\n  ros__parameters:\n    # group\n    a: 1\n    b: 2\n"
        '    c: "x"  # own\n    d: 3\n\n    e: "#"\n    f: [1]  # own\n'
    )
    assert uncommented_parameters(text) == ["n.d", "n.e"]


def test_every_parameter_in_cell_yaml_is_commented():
    assert uncommented_parameters(CELL_YAML.read_text()) == [], "params/cell.yaml: parameters without a comment"
