"""`qc_cloud` command line: one entry point; every module in qc_cloud.commands adds its subcommand(s)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from qc_cloud import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qc_cloud", description="Cloud-side tools of the inspection cell.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
