"""Training checkpoints: the best weights plus everything needed to export them again (configuration,
recorded split, data set fingerprint, history). Re-export with `qc_cloud export --checkpoint ...`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qc_cloud.training.config import TrainConfig
from qc_cloud.training.errors import ConfigError
from qc_cloud.training.models import DefectClassifier, build_model

CHECKPOINT_FORMAT = "qc_cloud.checkpoint/1"


@dataclass
class Checkpoint:
    model: DefectClassifier
    config: TrainConfig
    split: dict[str, Any]  # Split.to_dict()
    history: list[dict[str, Any]]
    training: dict[str, Any]  # best epoch, class weights, timings, command


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "architecture": checkpoint.model.architecture,
            "config": checkpoint.config.to_dict(),
            "state_dict": checkpoint.model.state_dict(),
            "split": checkpoint.split,
            "history": checkpoint.history,
            "training": checkpoint.training,
        },
        tmp,
    )
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)  # our own file: plain dicts and tensors
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a qc_cloud checkpoint (format {CHECKPOINT_FORMAT!r})")
    config = TrainConfig.from_dict(data["config"])
    if data["architecture"] != config.backbone:
        raise ConfigError(f"checkpoint {path}: architecture {data['architecture']} != configured {config.backbone}")
    model = build_model(config.backbone, input_size=config.input_size, pretrained=False, dropout=config.dropout)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {path} does not fit a {config.backbone} classifier: {str(exc)[:300]}") from exc
    model.eval()
    return Checkpoint(model, config, data["split"], data.get("history", []), data.get("training", {}))
