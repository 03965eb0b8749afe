"""`qc_cloud` command line: one entry point, one subcommand per tool (each tool registers itself)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules; each exposes register(subparsers). Added by the tools as they land.
_TOOLS: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qc_cloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _TOOLS:
        importlib.import_module(f"qc_cloud.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
