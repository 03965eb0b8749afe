"""A good-parts-only anomaly model (PatchCore-style) on the classifier's backbone: `qc_cloud train --method anomaly`.

For a new line that has no defect images yet (MVTec AD's own training data is good parts only):
1. Patch features: the pretrained EfficientNet-Lite0 base, outputs of the stride-8 stage (block 4, 40 channels)
   and the stride-16 stage (block 10, 112 channels, upsampled to stride 8), each averaged over its 3x3
   neighbourhood (local context, as PatchCore does) and concatenated: one 152-d vector per 8x8-pixel patch.
2. Memory bank: the patches of the training split's good images, greedily coreset-subsampled (k-centre on a
   random projection, Sener & Savarese 2018 as in PatchCore) to coreset_fraction of them, max_bank at most.
3. Score: each patch's distance to its nearest bank patch; the anomaly map is that per patch, upsampled
   (bilinear) to the input size and lightly smoothed; the image score is the map's maximum.
4. Exported to ONNX as one graph: the bank is a constant, the nearest-neighbour distance is matrix operations
   (|x|^2 - 2 x.B^T + |B|^2, then min), so the edge runs it on the same backends as the classifier. Outputs:
   "logit" (N, 1) the raw image score, "anomaly_map" (N, 1, H, W) in [0, 1] for the overlay.
5. Mapping to [0, 1]: on the validation split's good parts (never the training ones, never defects):
   P = sigmoid(scale * score + shift) with P = 0.5 at the highest validation good score and the good scores'
   spread setting the slope; stored as the manifest's output calibration, so the cell's bands apply as they are.
The report gives image AUROC and, where masks exist (the generator writes them), pixel AUROC.
Anchor: anomalib's PatchCore (src/anomalib/models/image/patchcore); no code taken from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from qc_cloud.training.batches import input_batches
from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.errors import ConfigError
from qc_cloud.training.evaluate import OnnxScorer, evaluate, roc_auc, score_samples
from qc_cloud.training.export import INPUT_NAME, LOGIT_NAME, OPSET
from qc_cloud.training.models import build_model
from qc_cloud.training.splits import Split

log = logging.getLogger(__name__)

ANOMALY_MAP_NAME = "anomaly_map"
LAYERS = (4, 10)  # EfficientNet-Lite0 block indices: end of the stride-8 and of the stride-16 (112 ch) stages
PROJECTION_DIM = 64  # random projection used by the coreset search only
MAX_CANDIDATES = 60000  # patches drawn at random before the greedy coreset (bounds its cost)
MAP_SIGMA = 4.0  # Gaussian smoothing of the full-size map, pixels (PatchCore: sigma 4)


class PatchFeatures(nn.Module):
    """The base's stem and blocks up to LAYERS[-1]: (N, 3, H, W) -> (N, C, H/8, W/8) patch features."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.stem, self.bn0, self.act = base._conv_stem, base._bn0, base._swish
        self.blocks = nn.ModuleList(base._blocks[: LAYERS[-1] + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.stem(x)))
        taken = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LAYERS:
                taken.append(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        size = taken[0].shape[-2:]
        return torch.cat(
            [taken[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taken[1:]], 1
        )


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class PatchCoreModel(nn.Module):
    """Features -> nearest-bank-patch distance -> (image score (N, 1), anomaly map (N, 1, H, W) in [0, 1])."""

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, input_size: int, map_range: tuple[float, float]):
        super().__init__()
        self.features = features
        self.register_buffer("bank", bank.contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))
        self.register_buffer("map_range", torch.tensor(map_range, dtype=torch.float32))
        self.register_buffer("kernel", _gaussian_kernel(MAP_SIGMA * input_size / 256))
        self.input_size = input_size

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (N, C, h, w)
        n, c, h, w = f.shape
        flat = f.permute(0, 2, 3, 1).reshape(n * h * w, c)
        d2 = (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ self.bank.T + self.bank_sq[None, :]
        return torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0)).reshape(n, 1, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.patch_distances(x)
        score = dist.amax(dim=(2, 3))  # (N, 1)
        full = F.interpolate(dist, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        k = self.kernel
        pad = k.numel() // 2
        full = F.conv2d(F.pad(full, (pad, pad, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
        full = F.conv2d(F.pad(full, (0, 0, pad, pad), mode="replicate"), k.reshape(1, 1, -1, 1))
        lo, hi = self.map_range[0], self.map_range[1]
        return score, torch.clamp((full - lo) / (hi - lo), 0.0, 1.0)


def greedy_coreset(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k rows chosen by greedy k-centre (each new row the farthest from those already chosen), on a
    random projection of the rows."""
    n = len(features)
    if k >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 11])
    proj = rng.normal(0, 1 / np.sqrt(PROJECTION_DIM), (features.shape[1], PROJECTION_DIM)).astype(np.float32)
    z = torch.from_numpy(features @ proj)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = int(rng.integers(n))
    dist = torch.cdist(z, z[chosen[0] : chosen[0] + 1]).reshape(-1)
    for i in range(1, k):
        chosen[i] = int(torch.argmax(dist))
        dist = torch.minimum(dist, torch.cdist(z, z[chosen[i] : chosen[i] + 1]).reshape(-1))
    return chosen


def _patches(extractor: PatchFeatures, dataset: Dataset, samples: list[Sample], spec, batch_size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for inputs, _, _ in input_batches(dataset, samples, spec, batch_size):
            f = extractor(torch.from_numpy(inputs))
            out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy())
    return np.concatenate(out).astype(np.float32)


def build_patchcore(
    config: TrainConfig, dataset: Dataset, train_good: list[Sample], spec, *, val_good: list[Sample]
) -> tuple[PatchCoreModel, dict[str, Any]]:
    if config.backbone != "efficientnet_lite0":
        raise ConfigError("the anomaly model needs the pretrained efficientnet_lite0 backbone")
    if not train_good:
        raise ConfigError("the anomaly model needs good images in the training split")
    base = build_model(
        config.backbone, input_size=config.input_size, weights=Path(config.weights) if config.weights else None
    ).base
    extractor = PatchFeatures(base).eval()
    start = time.perf_counter()
    patches = _patches(extractor, dataset, train_good, spec, config.batch_size)
    t_features = time.perf_counter() - start
    rng = np.random.default_rng([config.seed, 12])
    candidates = (
        patches if len(patches) <= MAX_CANDIDATES else patches[rng.choice(len(patches), MAX_CANDIDATES, replace=False)]
    )
    k = int(min(config.max_bank, max(16, round(config.coreset_fraction * len(candidates)))))
    start = time.perf_counter()
    bank = candidates[greedy_coreset(candidates, k, config.seed)]
    t_coreset = time.perf_counter() - start
    # The map's [0, 1] range: from the median patch distance of held-out good parts (0) to their highest (1).
    model = PatchCoreModel(extractor, torch.from_numpy(bank), config.input_size, (0.0, 1.0)).eval()
    probe = val_good or train_good[: min(8, len(train_good))]
    with torch.inference_mode():
        dists = np.concatenate(
            [
                model.patch_distances(torch.from_numpy(x)).reshape(-1).numpy()
                for x, _, _ in input_batches(dataset, probe, spec, config.batch_size)
            ]
        )
    lo, hi = float(np.median(dists)), float(dists.max())
    model.map_range.copy_(torch.tensor([lo, max(hi, lo + 1e-6) * 1.0], dtype=torch.float32))
    info = {
        "patches": len(patches),
        "candidates": len(candidates),
        "bank": len(bank),
        "feature_dim": int(bank.shape[1]),
        "layers": list(LAYERS),
        "map_range": [lo, hi],
        "seconds": {"features": t_features, "coreset": t_coreset},
    }
    return model, info


def score_mapping(good_scores: np.ndarray) -> tuple[float, float]:
    """(scale, shift) with sigmoid(scale * s + shift) = 0.5 at the highest held-out good score and the good scores'
    spread as the unit: a good part one spread above the worst held-out good part scores 0.88."""
    s = np.asarray(good_scores, dtype=np.float64)
    threshold = float(s.max())
    spread = float(max(s.std(), 1e-3 * max(abs(threshold), 1.0)))
    return 2.0 / spread, -2.0 * threshold / spread


class _ExportGraph(nn.Module):
    def __init__(self, model: PatchCoreModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def export_anomaly_onnx(model: PatchCoreModel, path: Path, input_size: int) -> Path:
    dummy = torch.zeros(1, 3, input_size, input_size)
    torch.onnx.export(
        _ExportGraph(model).eval(),
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[LOGIT_NAME, ANOMALY_MAP_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, LOGIT_NAME: {0: "batch"}, ANOMALY_MAP_NAME: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return Path(path)


def anomaly_parity(model: PatchCoreModel, onnx_path: Path, inputs: np.ndarray) -> dict[str, float]:
    """Max |difference| of raw score and of anomaly map between PyTorch and ONNX Runtime on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    score_o, map_o = session.run([LOGIT_NAME, ANOMALY_MAP_NAME], {INPUT_NAME: inputs})
    with torch.inference_mode():
        score_t, map_t = (t.numpy() for t in model(torch.from_numpy(inputs)))
    return {
        "images": len(inputs),
        "max_abs_score_diff": float(np.abs(score_o - score_t).max()),
        "max_rel_score_diff": float((np.abs(score_o - score_t) / np.maximum(np.abs(score_t), 1e-6)).max()),
        "max_abs_map_diff": float(np.abs(map_o - map_t).max()),
    }


def mask_for(dataset: Dataset, sample: Sample, size: int) -> np.ndarray | None:
    """The ground-truth mask of a defective MVTec-layout test image, resized to the model input (nearest)."""
    parts = Path(sample.path).parts
    if len(parts) < 3 or parts[0] != "test":
        return None
    path = dataset.root / "ground_truth" / parts[1] / (Path(sample.path).stem + "_mask.png")
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if mask is None else cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 127


def pixel_auroc(session_map, dataset: Dataset, samples: list[Sample], spec, batch_size: int, seed: int) -> float | None:
    """Pixel AUROC over the test images whose masks are known (good images: all-zero masks); pixels subsampled."""
    rng = np.random.default_rng([seed, 13])
    labels, scores = [], []
    size = spec.input_height
    for inputs, _, chunk in input_batches(dataset, samples, spec, batch_size):
        maps = session_map(inputs)
        for j, i in enumerate(chunk):
            s = samples[i]
            mask = np.zeros((size, size), bool) if not s.is_defect else mask_for(dataset, s, size)
            if mask is None:
                continue
            pick = rng.choice(size * size, min(size * size, 4096), replace=False)
            labels.append(mask.reshape(-1)[pick])
            scores.append(maps[j, 0].reshape(-1)[pick])
    if not labels:
        return None
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return None
    return roc_auc(y.astype(np.float32), np.concatenate(scores))


def train_anomaly(
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    *,
    progress: bool,
    command: str,
    started: float,
    started_at: str,
):
    """Build, calibrate, export, check, evaluate and package the anomaly model (the pipeline's RunResult)."""
    import tempfile

    from qc_cloud.training.calibration import reliability
    from qc_cloud.training.package import PackageContents, pick_golden, write_golden, write_manifest
    from qc_cloud.training.pipeline import (
        RunResult,
        _dataset_info,
        _headline,
        _publish,
        edge_cost,
        preprocessing_for,
    )
    from qc_cloud.training.report import write_report
    from qc_contract.model_manifest import Manifest

    spec = preprocessing_for(config)
    train_good = [s for s in split.samples(dataset, "train") if not s.is_defect]
    val_good = [s for s in split.samples(dataset, "val") if not s.is_defect]
    test = split.samples(dataset, "test")
    log.info(f"anomaly model: memory bank from {len(train_good)} good training images (defective ones unused)")
    model, info = build_patchcore(config, dataset, train_good, spec, val_good=val_good)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        model_path = export_anomaly_onnx(model, staging / "model.onnx", config.input_size)
        parity_inputs, _, _ = next(input_batches(dataset, test[:4], spec, 4))
        parity = anomaly_parity(model, model_path, parity_inputs)
        scorer = OnnxScorer(model_path)
        good_scores = score_samples(
            scorer.logits, dataset, val_good or train_good, spec, batch_size=config.batch_size, progress=False
        )
        scorer.calibration = score_mapping(good_scores)
        raw_test = score_samples(scorer.logits, dataset, test, spec, batch_size=config.batch_size, progress=False)
        evaluation = evaluate(
            scorer,
            dataset,
            test,
            spec,
            low=config.decision_low,
            high=config.decision_high,
            batch_size=config.batch_size,
            progress=progress,
        )
        session = scorer.session
        pix = pixel_auroc(
            lambda x: session.run([ANOMALY_MAP_NAME], {INPUT_NAME: x})[0],
            dataset,
            test,
            spec,
            config.batch_size,
            config.seed,
        )
        golden = write_golden(staging, dataset, pick_golden(test, config.golden_per_class, config.seed), scorer, spec)
        seconds = time.perf_counter() - started
        training = {
            "command": command,
            "method": "anomaly",
            "config": config.to_dict(),
            "patchcore": info,
            "score_mapping": {
                "scale_shift": list(scorer.calibration),
                "good_images": len(good_scores),
                "from": "validation good parts" if val_good else "training good parts",
            },
            "seconds": seconds,
            "started_at": started_at,
            "torch": torch.__version__,
        }
        dataset_info = _dataset_info(dataset, split, config)
        version = config.version or f"patchcore-{config.backbone}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
        image_auroc = evaluation.metrics["roc_auc"]
        write_manifest(
            staging,
            PackageContents(
                architecture=f"patchcore_{config.backbone}",
                version=version,
                preprocessing=spec,
                metrics={**_headline(evaluation.metrics), "image_auroc": image_auroc, "pixel_auroc": pix},
                dataset=dataset_info,
                training={k: v for k, v in training.items() if k != "config"},
                classifier_weights=None,
                calibration=scorer.calibration,
                anomaly_map=ANOMALY_MAP_NAME,
            ),
            golden,
            features=False,
        )
        split.save(staging / "split.json", dataset)
        config.save(staging / "train_config.json")
        manifest = Manifest.load(staging)
        labels = evaluation.labels
        report = {
            "model": {
                "architecture": manifest.architecture,
                "version": manifest.version,
                "input_size": config.input_size,
                "opset": OPSET,
                "fp16": False,
                "sha256": manifest.sha256,
                "size_bytes": manifest.size_bytes,
                "features_output": False,
                "anomaly": {**info, "image_auroc": image_auroc, "pixel_auroc": pix, "parity": parity},
            },
            "dataset": {**dataset_info, "root": str(dataset.root)},
            "test": evaluation.metrics,
            "calibration": {
                "method": "good-part score mapping",
                "scale_shift": list(scorer.calibration),
                "n_val": len(good_scores),
                "test_ece_before": None,
                "test_ece_after": reliability(evaluation.scores, labels)["ece"],
                "reliability_after": reliability(evaluation.scores, labels)["bins"],
                "raw_score_auroc": roc_auc(labels, raw_test),
            },
            "edge_cost": edge_cost(config.input_size),
            "golden": [asdict(g) for g in golden],
            "caveats": [
                "Good-parts-only model: it flags what differs from the good parts it has seen, defect or not. "
                "The [0, 1] mapping puts the worst held-out good part at 0.5."
            ],
            "training": {
                **training,
                "epochs": {},
                "best": {},
                "class_weights": {},
                "unfrozen_layers": 0,
                "timings": info["seconds"],
            },
        }
        written = write_report(staging, report, evaluation, None)
        report["plots"] = {
            n: p.relative_to(staging).as_posix() for n, p in written.items() if n not in ("json", "markdown")
        }
        _publish(staging, out_dir)
    manifest = Manifest.load(out_dir)
    manifest.verify_model_file(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths.update({name: out_dir / rel for name, rel in report["plots"].items()})
    return RunResult(out_dir, out_dir, manifest, evaluation, report, paths)
