"""Folder data sets of part images: discovery, labels, image reading, fingerprint.

Two layouts are understood:

MVTec AD (`train/` and `test/` present)::

    train/good/*.png            good parts only (MVTec's training split is one-class)
    test/good/*.png             good parts
    test/<defect_type>/*.png    defective parts, one folder per defect type
    ground_truth/<defect_type>/ defect masks (not used for classification)

Generic (anything else), one folder per class::

    good/ (or ok/, normal/)     good parts
    defect/ (or defective/, bad/, ng/)   defective parts; subfolders, if any, name the defect types
    <other folder>/             defective parts of defect type <other folder>

Images are found recursively inside a class folder. Every image is decoded once when the data set is
loaded, so an unreadable file stops the run before any training time is spent, and its bytes go into
the data set fingerprint (recorded in the model manifest).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from qc_cloud.training.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD = "good"
GOOD_FOLDERS = frozenset({"good", "ok", "normal"})
DEFECT_FOLDERS = frozenset({"defect", "defective", "bad", "ng"})
MASK_FOLDERS = frozenset({"ground_truth", "masks"})
LAYOUTS = ("mvtec", "generic")


@dataclass(frozen=True)
class Sample:
    path: str  # POSIX path relative to the data set root
    label: int  # 0 = good, 1 = defective
    defect_type: str  # GOOD for good parts; the stratum of the split

    @property
    def is_defect(self) -> bool:
        return self.label == 1


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str  # one of LAYOUTS
    samples: tuple[Sample, ...]
    fingerprint: str  # sha256 over (path, label, defect type, file sha256) of every sample
    version: str | None = None  # the data set version (`qc_cloud dataset build`) these images are the data/ of

    def counts(self) -> dict[str, int]:
        """Images per defect type ("good" included)."""
        return dict(sorted(Counter(s.defect_type for s in self.samples).items()))

    def image(self, sample: Sample) -> np.ndarray:
        return read_image(self.root / sample.path)

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "images": len(self.samples),
            "good": sum(not s.is_defect for s in self.samples),
            "defective": sum(s.is_defect for s in self.samples),
            "per_type": self.counts(),
            "fingerprint": self.fingerprint,
        }


def decode_image(data: bytes, source: Path | str) -> np.ndarray:
    """Encoded bytes -> H x W x 3 uint8 BGR. Grayscale is copied to 3 channels, alpha dropped, 16 bit scaled
    to 8 bit (as qc_contract.preprocess does for 16-bit frames)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None or image.size == 0:
        raise DatasetError(f"unreadable image {source} (not a decodable {'/'.join(sorted(IMAGE_SUFFIXES))} file)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"image {source} has unsupported pixel type {image.dtype} (8 or 16 bit expected)")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def read_image(path: Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    return decode_image(data, path)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> str:
    return "mvtec" if (root / "train").is_dir() and (root / "test").is_dir() else "generic"


def _mvtec_samples(root: Path) -> list[tuple[Path, int, str]]:
    if not (root / "train" / GOOD).is_dir():
        raise DatasetError(f"{root} looks like MVTec AD (train/, test/) but has no train/good/ folder")
    found = [(p, 0, GOOD) for p in _images_under(root / "train" / GOOD)]
    for folder in _subdirs(root / "test"):
        label, defect_type = (0, GOOD) if folder.name == GOOD else (1, folder.name)
        found += [(p, label, defect_type) for p in _images_under(folder)]
    return found


def _generic_samples(root: Path) -> list[tuple[Path, int, str]]:
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DatasetError(
            f"{len(loose)} image(s) directly in {root} (e.g. {loose[0]}) have no label: "
            "put them in a class folder (good/, defect/ or one folder per defect type)"
        )
    found: list[tuple[Path, int, str]] = []
    for folder in _subdirs(root):
        name = folder.name.lower()
        if name in MASK_FOLDERS:
            continue
        if name in GOOD_FOLDERS:
            found += [(p, 0, GOOD) for p in _images_under(folder)]
        elif name in DEFECT_FOLDERS:
            for p in _images_under(folder):
                rel = p.relative_to(folder)
                found.append((p, 1, rel.parts[0] if len(rel.parts) > 1 else folder.name))
        else:
            found += [(p, 1, folder.name) for p in _images_under(folder)]
    return found


def discover(root: Path) -> tuple[str, list[tuple[Path, int, str]]]:
    """(layout, [(image path, label, defect type)]) of a data set folder, without reading the images."""
    layout = detect_layout(root)
    return layout, (_mvtec_samples(root) if layout == "mvtec" else _generic_samples(root))


def load_dataset(root: Path | str, *, progress: bool = True, good_only_ok: bool = False) -> Dataset:
    """Discover, label and check every image under `root`. Raises DatasetError with the reason.

    A data set of good images only is refused unless `good_only_ok` (the anomaly model's case: a new line with
    no defect images yet); one of defective images only is always refused. A data set version (a folder with
    version.json, `qc_cloud dataset build`) is verified first (a tampered version is refused) and its training
    images (data/) are read; its regression set is regression/."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"data set folder {root} does not exist")
    version_id = None
    if (root / "version.json").is_file():
        from qc_cloud.training.dataset_versions import VersionError, read_version

        try:
            version = read_version(root)
        except VersionError as exc:
            raise DatasetError(str(exc)) from exc
        root, version_id = version.root / "data", version.id
    layout, found = discover(root)
    if not found:
        raise DatasetError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}; expected the MVTec AD layout "
            "(train/good, test/good, test/<defect>) or class folders (good/, defect/)"
        )
    labels = Counter(label for _, label, _ in found)
    if len(labels) < 2 and not (good_only_ok and 0 in labels):
        only = "good" if 0 in labels else "defective"
        hint = "; with good parts only, train the anomaly model (--method anomaly)" if only == "good" else ""
        raise DatasetError(
            f"{root} holds only {only} images ({len(found)}): a binary classifier needs good and defective images"
            + hint
        )
    samples, lines, unreadable = [], [], []
    for path, label, defect_type in tqdm(found, desc="checking images", unit="img", disable=not progress):
        try:
            data = path.read_bytes()
            decode_image(data, path)
        except OSError as exc:
            unreadable.append(f"cannot read image {path}: {exc.strerror or exc}")
            continue
        except DatasetError as exc:
            unreadable.append(str(exc))
            continue
        rel = path.relative_to(root).as_posix()
        samples.append(Sample(rel, label, defect_type))
        lines.append(f"{rel}\t{label}\t{defect_type}\t{hashlib.sha256(data).hexdigest()}\n")
    if unreadable:
        shown = "; ".join(unreadable[:5]) + (f"; ... and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise DatasetError(f"{len(unreadable)} unreadable image(s) in {root}: {shown}")
    fingerprint = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    return Dataset(root=root, layout=layout, samples=tuple(samples), fingerprint=fingerprint, version=version_id)
