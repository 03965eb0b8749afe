"""Input-size search (issue 25): choose the model's input side on the validation split, not from the image size.

"Small defects on larger images get a larger input" is a guess: on the harder synthetic benchmark the frozen
pretrained features are WORSE at 320 px than at 224 px (bench/bench_pooling.py), on the bottles better. So the
recipe measures instead of guessing: for each candidate side (224 and the side the images suggest, see
config.resolve_input_size; or the sides listed in input_size_candidates) the same frozen-feature probe is scored
— the pretrained base's pooled features (no augmentation) and a balanced logistic regression on them.

Scored how: a validation split of a real line's first data set is small (26 images, 8 defective, on the bottle
benchmark), and one probe scored on it is noise: measured there, 224 px 1.000 vs 320 px 0.722, while 320 px
trains the better model. So the score is the cross-validated ROC AUC over the training AND validation images
(stratified k folds, k <= 5, drawn by the seed; the test split is never touched): every one of those images is
scored once by a probe that did not see it. The probe's L2 strength is the best of a small grid, the same grid
for every candidate. The best AUC wins; a tie goes to the lower cross-validated loss, then to the smaller
(cheaper) side. Every candidate gets the same images, folds and probe; the result is deterministic for a seed.
The choice and every score go into the training report and the manifest (`training.input_size_search`).

The probe ranks the sizes by what Phase I starts from; Phase II then fine-tunes at the chosen size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qc_cloud.training.batches import input_batches
from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.evaluate import roc_auc
from qc_cloud.training.splits import Split

log = logging.getLogger("qc_cloud.training")

L2_GRID = (1e-2, 1e-1, 1.0, 10.0)  # on standardised features; the mean loss plus l2 * |w|^2 / 2


@dataclass(frozen=True)
class Candidate:
    input_size: int
    auc: float  # cross-validated ROC AUC over train + validation images
    loss: float  # cross-validated balanced log-loss
    l2: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "cv_auc": round(self.auc, 6),
            "cv_loss": round(self.loss, 6),
            "l2": self.l2,
            "seconds": round(self.seconds, 2),
        }


def candidate_sizes(from_images: int, listed: tuple[int, ...] = ()) -> list[int]:
    """The user's listed sides when given; else 224 (the backbone's native side) and the side the images
    suggest. Sorted, without repeats."""
    return sorted({int(s) for s in listed} if listed else {224, int(from_images)})


def _subsample(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """At most `limit` samples, the same share of each label, chosen by the seed (deterministic)."""
    if limit <= 0 or len(samples) <= limit:
        return list(samples)
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        keep = max(1, round(limit * len(group) / len(samples)))
        out += [group[i] for i in sorted(rng.choice(len(group), size=min(keep, len(group)), replace=False))]
    return out


def fit_probe(
    xtr: torch.Tensor, ytr: torch.Tensor, l2: float, *, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced logistic regression with an L2 penalty (LBFGS from zeros: deterministic)."""
    pos = float(ytr.mean())
    weight = torch.where(ytr > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(xtr.shape[1], dtype=xtr.dtype, requires_grad=True)
    b = torch.zeros(1, dtype=xtr.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr, weight=weight)
        loss = loss + l2 * (w * w).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def folds(labels: np.ndarray, seed: int, k: int = 5) -> np.ndarray:
    """Stratified fold index per image: k folds (fewer when a class has fewer than k images), drawn by the seed."""
    k = max(2, min(k, *(int((labels == c).sum()) for c in (0, 1))))
    fold = np.zeros(len(labels), dtype=int)
    rng = np.random.default_rng(seed)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


def probe_scores(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float, float]:
    """(cross-validated AUC, cross-validated balanced loss, L2) of the probe: out-of-fold logits of every image,
    for each L2 of the grid; the best AUC (then loss) over the grid."""
    x, y = x.double(), y.double()
    fold = folds(y.numpy(), seed)
    pos = float(y.mean())
    weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    best = None
    for l2 in L2_GRID:
        logits = torch.zeros(len(y), dtype=torch.float64)
        for f in np.unique(fold):
            fit, held = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
            mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
            w, b = fit_probe((x[fit] - mu) / sd, y[fit], l2)
            logits[held] = ((x[held] - mu) / sd) @ w + b
        auc = float(roc_auc(y.numpy(), logits.numpy()))
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weight))
        if best is None or (round(-auc, 9), round(loss, 9)) < (round(-best[0], 9), round(best[1], 9)):
            best = (auc, loss, l2)
    return best


def search_input_size(
    config: Any,
    dataset: Dataset,
    split: Split,
    sizes: list[int],
    *,
    preprocessing_for: Any,
    build_model: Any,
) -> dict[str, Any]:
    """Score each candidate side with the same frozen-feature probe, cross-validated over the training and
    validation images; the section the training report and manifest record (`chosen`, `candidates`, ...).
    Needs good and defective images in both splits (the caller checks)."""
    started = time.perf_counter()
    pool = split.samples(dataset, "train") + split.samples(dataset, "val")
    images = _subsample(pool, config.input_size_search_images, config.seed)
    results: list[Candidate] = []
    for size in sizes:
        t0 = time.perf_counter()
        sized = config.replace(input_size=size)
        spec = preprocessing_for(sized)
        torch.manual_seed(config.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            model = build_model(
                config.backbone,
                input_size=size,
                weights=Path(config.weights) if config.weights else None,
                dropout=config.dropout,
                pooling=config.pooling,
            ).eval()

        def features(samples: list[Sample], model=model, spec=spec) -> tuple[torch.Tensor, torch.Tensor]:
            xs, ys = [], []
            with torch.inference_mode():
                for inputs, labels, _ in input_batches(dataset, samples, spec, config.batch_size):
                    xs.append(model.pooled(torch.from_numpy(inputs)))
                    ys.append(torch.from_numpy(labels))
            return torch.cat(xs), torch.cat(ys)

        x, y = features(images)
        auc, loss, l2 = probe_scores(x, y, config.seed)
        results.append(Candidate(size, auc, loss, l2, time.perf_counter() - t0))
        log.info(f"input size {size} px: cross-validated AUC {auc:.4f}, loss {loss:.4f} (probe L2 {l2:g})")
    chosen = choose(results)
    return {
        "method": "frozen-feature probe (balanced logistic regression on the pretrained base's pooled features), "
        "cross-validated over the training and validation images; best AUC, ties to lower loss, then the smaller side",
        "candidates": [c.to_dict() for c in results],
        "chosen": chosen.input_size,
        "images": len(images),
        "defective_images": sum(s.label for s in images),
        "folds": int(folds(np.asarray([s.label for s in images]), config.seed).max() + 1),
        "seconds": round(time.perf_counter() - started, 2),
    }


def choose(results: list[Candidate]) -> Candidate:
    """Best AUC; a tie (within 1e-9) goes to the lower loss, then to the smaller side."""
    return sorted(results, key=lambda c: (-round(c.auc, 9), round(c.loss, 9), c.input_size))[0]
