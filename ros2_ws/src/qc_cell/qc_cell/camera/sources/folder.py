"""Images from a directory tree, MVTec AD layout aware.

Ground truth comes from the path: `.../good/<file>` is a good part, `.../test/<defect>/<file>` a defective one of
type <defect> (MVTec AD: train/good, test/good, test/<defect>); anything else has no ground truth.
`ground_truth/` folders (MVTec masks) are not parts and are skipped. An unreadable image is logged with its path
and skipped; only a folder with no readable image at all is an error.

Symbolic links are followed, to folders as to files (class folders linked in from a network share are common); a
folder reached a second time, through a link loop or a second link to it, is read once and the repeat logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from qc_cell.camera.sources.base import (
    EndOfStreamError,
    Frame,
    FrameSource,
    SourceConfigError,
    SourceUnavailableError,
    Warn,
    default_warn,
    frame_from_image,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
ORDERS = ("sorted", "shuffled")


def ground_truth_of(path: Path) -> tuple[str | None, str | None]:
    """(label, defect_type) from an image's path: MVTec AD's good/ and test/<defect>/ folders."""
    category = path.parent.name
    if category == "good":
        return "good", None
    if path.parent.parent.name == "test":
        return "defect", category
    return None, None


def image_files(root: Path, warn: Warn) -> list[Path]:
    """Every image file under `root` (sorted), following symbolic links; `ground_truth/` folders left out. Each
    folder is read once, however many paths lead to it, so a link loop ends."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(error: OSError) -> None:
        warn(f"cannot read folder {error.filename}: {error.strerror}")

    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError as exc:
            unreadable(exc)
            subfolders.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            warn(f"skipping {folder}: that folder was already read through another path (a link loop?)")
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(name for name in subfolders if name != "ground_truth")  # the first path wins
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                files.append(path)
    return sorted(files)


class FolderSource(FrameSource):
    kind = "folder"

    def __init__(
        self, root: str, loop: bool = False, order: str = "sorted", seed: int = 0, warn: Warn | None = None
    ) -> None:
        if not root:
            raise SourceConfigError("folder path is empty")
        if order not in ORDERS:
            raise SourceConfigError(f"folder order {order!r} must be one of {list(ORDERS)}")
        self.root = Path(root).expanduser()
        self.loop, self.order, self.seed = loop, order, seed
        self._warn = warn or default_warn
        self._files: list[Path] = []
        self._cursor = 0
        self._passes = 0
        self._open = False
        self.skipped = 0  # unreadable images skipped so far

    @property
    def description(self) -> str:
        return f"folder:{self.root} ({len(self._files)} images)" if self._open else f"folder:{self.root}"

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if not self.root.is_dir():
            raise SourceUnavailableError(f"image folder {self.root} does not exist")
        files = image_files(self.root, self._warn)
        if not files:
            raise SourceUnavailableError(
                f"image folder {self.root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._files = files
        self._cursor = 0
        self._passes = 0
        self._shuffle()
        self._open = True

    def _shuffle(self) -> None:
        if self.order == "shuffled":  # a new, reproducible order on every pass
            np.random.default_rng([self.seed, self._passes]).shuffle(self._files)

    def close(self) -> None:
        self._open = False

    def read(self) -> Frame:
        if not self._open:
            raise SourceUnavailableError(f"{self.description}: not open")
        attempts = 0
        while True:
            if self._cursor >= len(self._files):
                if not self.loop:
                    raise EndOfStreamError(f"image folder {self.root}: all {len(self._files)} images delivered")
                self._cursor = 0
                self._passes += 1
                self._shuffle()
            if attempts >= len(self._files):
                raise SourceUnavailableError(
                    f"image folder {self.root}: none of its {len(self._files)} images is readable"
                )
            path = self._files[self._cursor]
            self._cursor += 1
            attempts += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None or image.size == 0:
                self.skipped += 1
                self._warn(f"skipping unreadable image {path}")
                continue
            label, defect_type = ground_truth_of(path)
            try:
                return frame_from_image(image, f"folder:{path.relative_to(self.root)}", label, defect_type)
            except SourceUnavailableError as exc:
                self.skipped += 1
                self._warn(f"skipping image {path}: {exc}")

    def stats(self) -> dict[str, object]:
        return {"images": len(self._files), "skipped_images": self.skipped, "passes": self._passes}
