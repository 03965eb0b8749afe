"""Write the parameter reference (docs/parameters.md) from the parameter specs.

python -m qc_cell.tools.param_docs                 # writes docs/parameters.md (run from the repository)
python -m qc_cell.tools.param_docs --check         # exit 1 when the file differs from the specs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qc_cell.cell_params import SPEC_MODULES, all_specs
from qc_cell.params_spec import NodeParams, Param

DEFAULT_OUTPUT = Path("docs/parameters.md")

HEADER = """\
# Parameter reference

Generated from the parameter specs by `python -m qc_cell.tools.param_docs`; do not edit by hand (a test fails when
this file differs from the specs). Each node's spec lives next to its core (the module named under each node); the
node declares every parameter from it, with its description, range and read-only flag, and checks runtime changes
against it. The values of a cell are set in `params/cell.yaml` (every parameter, commented).

**Changeable** parameters may be set on a running node; the node applies the change at once (or on its next tick),
after checking it against the spec and against the node's other parameters. The others are read-only: set them in
the params file and restart the node. On a running cell (namespace `cell1`):

```
# with ROS 2's command line (a system ROS install)
ros2 param set /cell1/decision reinspect_threshold 0.4
ros2 param describe /cell1/decision reinspect_threshold
# without it (the PyPI set-up): the same through rclpy's parameter services
python -m qc_cell.tools.param set /cell1/decision reinspect_threshold 0.4
python -m qc_cell.tools.param describe /cell1/decision reinspect_threshold
```

`python -m qc_cell.tools.param` also has `list` and `get`; it exits 2 for a usage error or a node that is not
running, 1 when the node refuses a change (the reason is printed).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    return "`" + json.dumps(list(value) if isinstance(value, tuple) else value) + "`"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _limits(param: Param) -> str:
    if param.range is not None:
        return f"{_number(param.range[0])} … {_number(param.range[1])}"
    if param.choices is not None:
        return ", ".join(f"`{choice}`" for choice in param.choices)
    return ""


def _node_section(spec: NodeParams) -> str:
    module = SPEC_MODULES[spec.node][0]
    where = "set by the launch file" if not spec.in_params_file else f"`{spec.node}:` in `params/cell.yaml`"
    lines = [
        f"## {spec.node}",
        "",
        f"{spec.summary[0].upper()}{spec.summary[1:]}. Spec: `{module}`; values: {where}.",
        "",
        "| Parameter | Type | Default | Range / choices | Changeable | Description |",
        "|---|---|---|---|---|---|",
    ]
    for param in spec:
        changeable = "**at run time**" if param.runtime else "read-only"
        lines.append(
            f"| `{param.name}` | {param.type} | {_value(param.default)} | {_limits(param)} | {changeable} | "
            f"{_cell(param.description)} |"
        )
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference, as committed in docs/parameters.md."""
    return "\n".join([HEADER, *(_node_section(spec) for spec in all_specs())])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m qc_cell.tools.param_docs", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
