"""qc_synthetic_parts: write an MVTec-AD-layout data set of synthetic bottle (or textured surface) images.

qc_synthetic_parts --out data/bottle_synth --train-good 200 --test-good 50 --test-per-defect 20
python -m qc_cell.camera.synthetic_cli --out /tmp/tiny --train-good 4 --test-good 2 --test-per-defect 1 --size 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qc_contract.synthetic import DEFECT_TYPES, PRODUCTS, write_mvtec_dataset
from qc_contract.synthetic_surface import SURFACE_DEFECT_TYPES


def _defect_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    known = DEFECT_TYPES + SURFACE_DEFECT_TYPES  # which of them fit the product is checked by the writer
    unknown = [t for t in types if t not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown defect types {unknown}; known: {', '.join(known)}")
    return types


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"{value} must be >= 32 pixels")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qc_synthetic_parts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="data set root (created; files are overwritten)")
    parser.add_argument("--train-good", type=_count, default=200, help="good training images (default 200)")
    parser.add_argument("--test-good", type=_count, default=50, help="good test images (default 50)")
    parser.add_argument("--test-per-defect", type=_count, default=20, help="test images per defect type (default 20)")
    parser.add_argument("--size", type=_size, help="square image size in pixels (sets width and height)")
    parser.add_argument("--width", type=_size, default=512, help="image width in pixels (default 512)")
    parser.add_argument("--height", type=_size, default=512, help="image height in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed: same seed, same data set (default 0)")
    parser.add_argument(
        "--product",
        choices=PRODUCTS,
        default="bottle",
        help="bottle (easy) or surface (the harder benchmark: fine low-contrast defects on textured grey parts, "
        "lighting drift; defect types crack, scratch, pit, stain)",
    )
    parser.add_argument(
        "--defect-types",
        type=_defect_types,
        default=None,
        help=f"comma-separated defect types (default: all of the product's; bottle: {','.join(DEFECT_TYPES)}; "
        f"surface: {','.join(SURFACE_DEFECT_TYPES)})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    width, height = (args.size, args.size) if args.size else (args.width, args.height)
    start = time.monotonic()
    try:
        root = write_mvtec_dataset(
            args.out,
            n_train_good=args.train_good,
            n_test_good=args.test_good,
            n_test_per_defect=args.test_per_defect,
            width=width,
            height=height,
            seed=args.seed,
            defect_types=args.defect_types,
            product=args.product,
        )
    except (OSError, ValueError) as exc:
        print(f"qc_synthetic_parts: {exc}", file=sys.stderr)
        return 1
    n_types = len(json.loads((root / "synthetic.json").read_text())["defect_types"])
    total = args.train_good + args.test_good + args.test_per_defect * n_types
    print(f"wrote {total} images ({width}x{height}) to {root} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
