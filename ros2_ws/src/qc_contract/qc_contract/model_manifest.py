"""The model package manifest (manifest.json): the contract between the cloud training/export tools
(which write it) and the edge inference node (which reads it).

A model package is a directory:
    manifest.json     this document
    model.onnx        the model (file name in `model_file`)
    golden/           optional golden set: reference images with expected scores (self-test before a swap)

Everything the edge needs to score an image the same way training did lives here, never hard-coded:
input shape, preprocessing (ROI, resize, letterbox, colour order, normalisation) and the meaning of
the output (sigmoid logit, 2-class softmax, or a probability).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# 2 added output.calibration and output.anomaly_map (issue 25), 3 decision_bands, 4 drift_reference (issue 22).
# Older manifests (without them) are still read; an edge that knows only an older version refuses a newer manifest by
# its version, with that reason.
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
ADDED_IN = {"calibration": 2, "anomaly_map": 2, "decision_bands": 3, "drift_reference": 4}
NESTED = ("preprocessing", "output", "golden", "decision_bands", "drift_reference")  # read into their dataclasses
MANIFEST_NAME = "manifest.json"
OUTPUT_SEMANTICS = ("sigmoid_logit", "softmax", "probability")
COLOR_ORDERS = ("RGB", "BGR")


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match its model file."""


@dataclass(frozen=True)
class Normalization:
    """x = (pixel / scale - mean) / std, per channel in the model's colour order.

    ImageNet: scale 255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    EfficientNet-Lite (TF-Lite weights): scale 1, mean 127, std 128.
    """

    scale: float = 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


IMAGENET = Normalization()
TFLITE = Normalization(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


@dataclass(frozen=True)
class Preprocessing:
    input_height: int = 224
    input_width: int = 224
    color_order: str = "RGB"  # channel order the model expects
    letterbox: bool = False  # keep aspect ratio and pad (value pad_value) instead of stretching
    pad_value: int = 0
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height crop before resizing; None = whole image
    normalization: Normalization = IMAGENET


@dataclass(frozen=True)
class Output:
    name: str = "logit"  # ONNX output tensor name
    semantics: str = "sigmoid_logit"  # one of OUTPUT_SEMANTICS
    defect_index: int = 1  # class index of "defective" when semantics == "softmax"
    features: str | None = None  # optional output with the last feature map (N, C, h, w), for CAM heatmaps
    classifier_weights: tuple[float, ...] | None = None  # head weights over C, for CAM (sigmoid head)
    # (scale, shift) fitted on the validation split: P(defect) = sigmoid(scale * logit + shift). None = plain
    # sigmoid. Only with sigmoid_logit semantics; for an anomaly model the "logit" is its raw distance score.
    calibration: tuple[float, float] | None = None
    anomaly_map: str | None = None  # optional output (N, 1, h, w) of an anomaly model: per-pixel map in [0, 1]


@dataclass(frozen=True)
class DecisionBands:
    """The decision bands the training tool proposes for this model (Normal < reinspect <= Re-inspect <
    defective <= Defective), fitted on the validation split for the targets in `basis`. The decision node uses
    them with `bands: from_model`; `feasible` says whether the targets were met there."""

    reinspect: float
    defective: float
    feasible: bool = False
    basis: str = ""


@dataclass(frozen=True)
class DriftReference:
    """What the model's validation data looked like (optional, issue 22): fixed-bin histograms (qc_contract.drift.BINS)
    of the validation images' statistics and of the model's calibrated defect probability on them. The fleet
    compares the cells' recent parts with it (drift alerts) until a cell's own line reference is complete."""

    parts: int
    histograms: dict[str, list[int]]


@dataclass(frozen=True)
class GoldenItem:
    file: str  # path relative to the package directory
    score: float  # expected defect probability


@dataclass(frozen=True)
class Manifest:
    version: str
    sha256: str  # of model_file
    model_file: str = "model.onnx"
    size_bytes: int = 0
    architecture: str = "efficientnet_b0"
    input_name: str = "input"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    output: Output = field(default_factory=Output)
    golden: tuple[GoldenItem, ...] = ()
    golden_tolerance: float = 0.02
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    decision_bands: DecisionBands | None = None
    drift_reference: DriftReference | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def applicable_bands(self) -> DecisionBands | None:
        """The proposed bands a cell applies by itself (decision `bands: from_model`) and the promotion gate judges
        the model at: only bands that met their targets on the validation split. Bands that miss them (e.g. an
        escape target reached only by rejecting most good parts) stay in the manifest and the report for people
        to read; they are never applied automatically (the cell keeps its own thresholds)."""
        bands = self.decision_bands
        return bands if bands is not None and bands.feasible else None

    @property
    def defect_types(self) -> tuple[str, ...]:
        """The defect types the model was trained on (the data set's class folders other than good), as
        `qc_cloud train` writes them into dataset.defect_types (older packages: the keys of dataset.per_type other
        than good); () for manifests without either."""
        data = self.dataset if isinstance(self.dataset, dict) else {}
        types = data.get("defect_types")
        if not isinstance(types, (list, tuple)):
            per_type = data.get("per_type")
            types = sorted(k for k in per_type if k != "good") if isinstance(per_type, dict) else ()
        return tuple(str(t) for t in types)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, package_dir: Path) -> Path:
        path = Path(package_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        if data.get("schema_version") not in READABLE_VERSIONS:
            raise ManifestError(
                f"unsupported manifest schema_version {data.get('schema_version')!r} (this edge reads "
                f"{list(READABLE_VERSIONS)})"
            )
        version = data.get("schema_version")
        present = [k for k in ("calibration", "anomaly_map") if k in data.get("output", {})]
        present += [k for k in ("decision_bands", "drift_reference") if data.get(k) is not None]
        too_new = [k for k in present if ADDED_IN[k] > version]
        if too_new:
            raise ManifestError(f"a schema_version {version} manifest cannot carry {', '.join(too_new)}")
        try:
            pre = dict(data.get("preprocessing", {}))
            norm_values = pre.pop("normalization", {})
            norm = Normalization(**{k: tuple(v) if isinstance(v, list) else v for k, v in norm_values.items()})
            if pre.get("roi") is not None:
                pre["roi"] = tuple(int(v) for v in pre["roi"])
            out = dict(data.get("output", {}))
            if out.get("classifier_weights") is not None:
                out["classifier_weights"] = tuple(float(v) for v in out["classifier_weights"])
            if out.get("calibration") is not None:
                out["calibration"] = tuple(float(v) for v in out["calibration"])
            manifest = cls(
                **{
                    **{k: v for k, v in data.items() if k not in NESTED},
                    "decision_bands": DecisionBands(**data["decision_bands"]) if data.get("decision_bands") else None,
                    "drift_reference": (
                        DriftReference(**data["drift_reference"]) if data.get("drift_reference") else None
                    ),
                    "preprocessing": Preprocessing(**pre, normalization=norm),
                    "output": Output(**out),
                    "golden": tuple(GoldenItem(**g) for g in data.get("golden", ())),
                }
            )
        except TypeError as exc:  # unknown or missing keys
            raise ManifestError(f"malformed manifest: {exc}") from exc
        manifest.validate()
        return manifest

    @classmethod
    def load(cls, package_dir: Path) -> Manifest:
        path = Path(package_dir)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ManifestError(f"no manifest at {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"unreadable manifest {path}: {exc}") from exc
        return cls.from_dict(data)

    def validate(self) -> None:
        pre, out, norm = self.preprocessing, self.output, self.preprocessing.normalization
        problems = []
        if not self.version:
            problems.append("empty version")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            problems.append("sha256 must be 64 lowercase hex digits")
        if not (8 <= pre.input_height <= 4096 and 8 <= pre.input_width <= 4096):
            problems.append(f"input size {pre.input_height}x{pre.input_width} out of range")
        if pre.color_order not in COLOR_ORDERS:
            problems.append(f"color_order must be one of {COLOR_ORDERS}")
        if pre.roi is not None and (len(pre.roi) != 4 or pre.roi[2] <= 0 or pre.roi[3] <= 0):
            problems.append(f"bad roi {pre.roi}")
        if len(norm.mean) != 3 or len(norm.std) != 3 or any(s == 0 or not math.isfinite(s) for s in norm.std):
            problems.append("normalization needs 3 means and 3 non-zero stds")
        if norm.scale <= 0:
            problems.append("normalization scale must be > 0")
        if out.semantics not in OUTPUT_SEMANTICS:
            problems.append(f"output semantics must be one of {OUTPUT_SEMANTICS}")
        if out.calibration is not None:
            if out.semantics != "sigmoid_logit":
                problems.append("output calibration needs sigmoid_logit semantics")
            if len(out.calibration) != 2 or not all(math.isfinite(v) for v in out.calibration):
                problems.append("output calibration must be two finite numbers (scale, shift)")
            elif out.calibration[0] <= 0:
                problems.append("output calibration scale must be > 0")
        bands = self.decision_bands
        if bands is not None:
            values = (bands.reinspect, bands.defective)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or not (
                0.0 < bands.reinspect < bands.defective <= 1.0
            ):
                problems.append(
                    f"decision_bands must satisfy 0 < reinspect < defective <= 1, got {bands.reinspect}, "
                    f"{bands.defective}"
                )
        if self.drift_reference is not None:
            from qc_contract.drift import check_layout

            try:
                check_layout(self.drift_reference.histograms)
                if self.drift_reference.parts < 0:
                    raise ValueError("negative parts")
            except (ValueError, TypeError, AttributeError) as exc:
                problems.append(f"drift_reference: {exc}")
        if problems:
            raise ManifestError("invalid manifest: " + "; ".join(problems))

    def verify_model_file(self, package_dir: Path) -> Path:
        """Check the model file's sha256 (and size, when given); return its path."""
        path = Path(package_dir) / self.model_file
        if not path.is_file():
            raise ManifestError(f"model file {path} missing")
        if self.size_bytes and path.stat().st_size != self.size_bytes:
            raise ManifestError(f"model file {path} is {path.stat().st_size} bytes, manifest says {self.size_bytes}")
        actual = sha256_file(path)
        if actual != self.sha256:
            raise ManifestError(f"model file {path} sha256 {actual} does not match manifest {self.sha256}")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
