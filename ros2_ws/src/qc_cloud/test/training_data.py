"""Small generated data sets for the training tests (imported by the test modules; not a test itself).

- `mvtec_dataset`: the cell's synthetic bottle generator in MVTec AD layout, at a small image size.
- `generic_dataset`: simple OpenCV drawings in the generic layout (good/, defect/<type>/ or a folder per
  class), with grayscale and JPEG files mixed in: a disc is a good part, a disc with a dark bar or a
  bright blob is defective. Easy enough that a few epochs learn something, which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from qc_contract.synthetic import write_mvtec_dataset


def draw_part(rng: np.random.Generator, size: int, defect: str | None) -> np.ndarray:
    image = np.full((size, size, 3), int(rng.integers(20, 40)), dtype=np.uint8)
    center = (size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3)))
    cv2.circle(image, center, size // 3, (150, 160, 155), -1, cv2.LINE_AA)
    if defect == "bar":
        cv2.line(image, (size // 4, size // 2), (3 * size // 4, size // 3), (10, 10, 10), max(2, size // 16))
    elif defect == "blob":
        cv2.circle(image, (size // 2 + size // 8, size // 2), max(3, size // 8), (250, 250, 250), -1)
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def generic_dataset(
    root: Path, *, n_good: int = 10, n_per_defect: int = 5, size: int = 64, nested: bool = True, seed: int = 0
) -> Path:
    """good/ + defect/{bar,blob}/ (nested) or good/ + bar/ + blob/ (one folder per class)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    folders = {"good": root / "good"}
    for kind in ("bar", "blob"):
        folders[kind] = root / "defect" / kind if nested else root / kind
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        image = draw_part(rng, size, None)
        if i % 3 == 0:  # some grayscale parts: must become 3 equal channels
            cv2.imwrite(str(folders["good"] / f"g{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        else:
            cv2.imwrite(str(folders["good"] / f"g{i:03d}.png"), image)
    for kind in ("bar", "blob"):
        for i in range(n_per_defect):
            suffix = ".jpg" if i % 2 else ".png"
            cv2.imwrite(str(folders[kind] / f"{kind}{i:03d}{suffix}"), draw_part(rng, size, kind))
    return root


def mvtec_dataset(
    root: Path, *, n_train_good: int = 8, n_test_good: int = 4, n_per_defect: int = 3, size: int = 64, seed: int = 0
) -> Path:
    return write_mvtec_dataset(
        Path(root),
        n_train_good=n_train_good,
        n_test_good=n_test_good,
        n_test_per_defect=n_per_defect,
        width=size,
        height=size,
        seed=seed,
    )
