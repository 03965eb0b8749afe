"""Input-size search (issue 25): choose the model's input side on the validation split, not from the image size.

"Small defects on larger images get a larger input" is a guess: on the harder synthetic benchmark the frozen
pretrained features are WORSE at 320 px than at 224 px (bench/bench_pooling.py), on the bottles better. So the
recipe measures instead of guessing: for each candidate side (224 and the side the images suggest, see
config.resolve_input_size; or the sides listed in input_size_candidates), the same frozen-feature probe — the
pretrained base's pooled features of the same training images (at most `input_size_search_images`, stratified, no
augmentation), a balanced logistic regression whose L2 strength is picked on an inner quarter of them — is scored
on the validation split. The best validation ROC AUC wins; a tie goes to the lower validation loss, then to the
smaller (cheaper) side. Every candidate gets the same images and the same probe, and the result is deterministic
for a seed. The choice and every score go into the training report and the manifest (`training.input_size_search`).

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

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
TIE = 1e-9


@dataclass(frozen=True)
class Candidate:
    input_size: int
    val_auc: float
    val_loss: float
    l2: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "val_auc": round(self.val_auc, 6),
            "val_loss": round(self.val_loss, 6),
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


def probe_scores(
    xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor, seed: int
) -> tuple[float, float, float]:
    """(validation AUC, validation balanced log-loss, chosen L2) of the probe trained on (xtr, ytr)."""
    xtr, xva = xtr.double(), xva.double()
    ytr, yva = ytr.double(), yva.double()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    # L2 chosen on an inner quarter of the training images, stratified, so the validation split only judges
    rng = np.random.default_rng(seed)
    inner_idx: list[int] = []
    for label in (0.0, 1.0):
        idx = np.flatnonzero(ytr.numpy() == label)
        inner_idx += list(rng.choice(idx, size=max(1, len(idx) // 4), replace=False))
    inner = torch.tensor(sorted(inner_idx))
    fit = torch.tensor(sorted(set(range(len(ytr))) - set(inner_idx)))
    best_l2, best_auc = L2_GRID[-1], -1.0
    if len(set(ytr[fit].tolist())) == 2 and len(set(ytr[inner].tolist())) == 2:
        for l2 in L2_GRID:
            w, b = fit_probe(xtr[fit], ytr[fit], l2)
            auc = roc_auc(ytr[inner].numpy(), (xtr[inner] @ w + b).numpy())
            if auc > best_auc + TIE:
                best_auc, best_l2 = auc, l2
    w, b = fit_probe(xtr, ytr, best_l2)
    logits = xva @ w + b
    pos = float(yva.mean())
    weight = torch.where(yva > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, yva, weight=weight))
    return float(roc_auc(yva.numpy(), logits.numpy())), loss, best_l2


def search_input_size(
    config: Any,
    dataset: Dataset,
    split: Split,
    sizes: list[int],
    *,
    preprocessing_for: Any,
    build_model: Any,
) -> dict[str, Any]:
    """Score each candidate side with the same frozen-feature probe on the validation split; the section the
    training report and manifest record (`chosen`, `candidates`, ...). Needs good and defective images in both
    the training and the validation split (the caller checks)."""
    started = time.perf_counter()
    train = _subsample(split.samples(dataset, "train"), config.input_size_search_images, config.seed)
    val = split.samples(dataset, "val")
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

        (xtr, ytr), (xva, yva) = features(train), features(val)
        auc, loss, l2 = probe_scores(xtr, ytr, xva, yva, config.seed)
        results.append(Candidate(size, auc, loss, l2, time.perf_counter() - t0))
        log.info(f"input size {size} px: validation AUC {auc:.4f}, loss {loss:.4f} (probe L2 {l2:g})")
    chosen = choose(results)
    return {
        "method": "frozen-feature probe (balanced logistic regression on the pretrained base's pooled features), "
        "scored on the validation split; best AUC, ties to lower loss, then to the smaller side",
        "candidates": [c.to_dict() for c in results],
        "chosen": chosen.input_size,
        "train_images": len(train),
        "val_images": len(val),
        "seconds": round(time.perf_counter() - started, 2),
    }


def choose(results: list[Candidate]) -> Candidate:
    """Best validation AUC; a tie (within 1e-9) goes to the lower validation loss, then to the smaller side."""
    return sorted(results, key=lambda c: (-round(c.val_auc, 9), round(c.val_loss, 9), c.input_size))[0]
