"""Input-size search (issue 25): choose the model's input side by a short run of the recipe itself.

Why not a cheaper proxy: "small defects on larger images get a larger input" is a guess, and a frozen-feature
probe (a logistic regression on the pretrained base's pooled features, cross-validated; the previous search) does
not predict the fine-tuned result either: on the surface benchmark it ranked 320 px above 224 px (0.927 vs 0.901)
while the fine-tuned model was better at 224 px (test AUC 0.933 vs 0.889). What is to be predicted is what the
recipe makes of each size, so each candidate is scored by the recipe:

- Candidates: 224 (the backbone's native side, the DEFAULT) and the side the images suggest
  (config.resolve_input_size), or the sides listed in input_size_candidates (then the default is 224 if listed,
  else the smallest, cheapest side).
- Each candidate: a fresh model at that side, trained by the very Trainer of the final run (Phase I on cached
  features until validation stops improving, then at most SEARCH_PHASE2_EPOCHS Phase II epochs), with the SAME
  time share: input_size_search_share of budget_minutes split equally between the candidates (a larger side gets
  fewer images per second, as it will in the final run under the same budget). Without a budget, the same epochs.
- Score: the validation split's ROC AUC of the candidate's best checkpoint (the split the final run early-stops
  on; the test split is never touched).
- Choice, with a confidence rule: a validation split is small (26 images, 8 defective, on the bottle benchmark),
  and one AUC on it is noisy. The default stays unless another side is better beyond that noise: the paired
  AUC difference (candidate - default, on the same validation images) is bootstrapped (BOOTSTRAP resamples,
  stratified by class, drawn by the seed); a side replaces the default only if the lower CONFIDENCE bound of the
  difference is above 0. Among several such sides the higher AUC wins, a tie the smaller side.
- Cost: the search's wall time is taken out of the training budget (the final Trainer gets what is left), and
  recorded. The default side runs first; another side is tried only if its short run's least cost (the
  default's feature cache and first Phase II epoch scaled by the input area, plus its Phase I) fits into what
  is left of the search's share; otherwise it is recorded as not tried and the default stays.
  The chosen side's short run is not thrown away: the final training continues it (Phase II from its best
  checkpoint, a warm restart of the schedule), so only the other candidates' runs cost extra.
- Record: the choice, every candidate's score and gain bound go into the training report and the manifest
  (`training.input_size_search`). Deterministic for a seed without a time budget (with one, the number of Phase II
  epochs that fit a share depends on the clock; under torchrun rank 0's clock decides, see distributed.py).
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
from qc_cloud.training.datasets import Dataset
from qc_cloud.training.distributed import World
from qc_cloud.training.evaluate import roc_auc
from qc_cloud.training.paired_stats import BOOTSTRAP, auc_gain_bound
from qc_cloud.training.splits import Split
from qc_cloud.training.trainer import Trainer, TrainResult

log = logging.getLogger("qc_cloud.training")

DEFAULT_SIZE = 224  # the backbone's native side: kept unless another side is better beyond the noise
SEARCH_PHASE2_EPOCHS = 2  # Phase II epochs of a candidate's short run (at most; the time share may cut them)
CONFIDENCE = 0.95  # one-sided: a side replaces the default if P(its AUC gain > 0) clears this


@dataclass(frozen=True)
class Candidate:
    input_size: int
    auc: float  # validation ROC AUC of the short run's best checkpoint
    loss: float  # its validation loss
    phase1_epochs: int = 0
    phase2_epochs: int = 0
    seconds: float = 0.0
    gain: float = 0.0  # AUC - the default's AUC (0 for the default)
    gain_lower: float = 0.0  # the lower CONFIDENCE bound of that gain (paired bootstrap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "val_auc": round(self.auc, 6),
            "val_loss": round(self.loss, 6),
            "phase1_epochs": self.phase1_epochs,
            "phase2_epochs": self.phase2_epochs,
            "seconds": round(self.seconds, 2),
            "auc_gain_vs_default": round(self.gain, 6),
            "auc_gain_lower_bound": round(self.gain_lower, 6),
        }


def candidate_sizes(from_images: int, listed: tuple[int, ...] = ()) -> list[int]:
    """The user's listed sides when given; else 224 (the backbone's native side) and the side the images
    suggest. Sorted, without repeats."""
    return sorted({int(s) for s in listed} if listed else {DEFAULT_SIZE, int(from_images)})


def default_size(sizes: list[int]) -> int:
    """The side kept unless another is better beyond the noise: 224 if a candidate, else the smallest."""
    return DEFAULT_SIZE if DEFAULT_SIZE in sizes else min(sizes)


def choose(results: list[Candidate], default: int) -> tuple[Candidate, str]:
    """The default side, unless others clear the confidence rule (gain_lower > 0): then the best AUC of those,
    a tie to the smaller side. Returns the choice and the reason in words."""
    by_size = {c.input_size: c for c in results}
    better = [c for c in results if c.input_size != default and c.gain_lower > 0]
    if not better:
        return by_size[default], (
            f"no side beat the default {default} px beyond the noise (lower {CONFIDENCE:.0%} bound of the AUC gain "
            "<= 0)"
        )
    best = sorted(better, key=lambda c: (-round(c.auc, 9), c.input_size))[0]
    return best, (
        f"{best.input_size} px beat the default {default} px by {best.gain:+.3f} AUC (lower {CONFIDENCE:.0%} bound "
        f"{best.gain_lower:+.3f})"
    )


def least_seconds(run: TrainResult, area_ratio: float) -> float:
    """The least a short run at another side costs, from the default side's run: its feature cache and first
    Phase II epoch (which every short run completes, whatever its share) scaled by the input area, plus its
    Phase I epochs on cached features (which do not depend on the side)."""
    first_phase2 = next((h.seconds for h in run.history if h.phase == 2), 0.0)
    per_pixel = run.timings.get("phase1_feature_cache_s", 0.0) + first_phase2
    return per_pixel * area_ratio + run.timings.get("phase1_epochs_s", 0.0)


def validation_logits(model: torch.nn.Module, dataset: Dataset, split: Split, spec: Any, config: Any, world: World):
    """(logits, labels) of the validation split (under torchrun each process scores its share, summed)."""
    samples = split.samples(dataset, "val")
    logits = np.zeros(len(samples), dtype=np.float64)
    model.eval()
    with torch.inference_mode():
        for inputs, _, chunk in input_batches(
            dataset, samples, spec, config.batch_size, order=world.share(range(len(samples)))
        ):
            logits[chunk] = model(torch.from_numpy(inputs)).reshape(-1).double().numpy()
    return world.sum_rows(logits), np.asarray([s.label for s in samples], dtype=np.float64)


def search_input_size(
    config: Any,
    dataset: Dataset,
    split: Split,
    sizes: list[int],
    *,
    preprocessing_for: Any,
    build_model: Any,
    world: World | None = None,
) -> tuple[dict[str, Any], TrainResult]:
    """Score each candidate side by a short run of the recipe, choose by the confidence rule (module docstring).
    Returns the section the training report and manifest record (`chosen`, `candidates`, `seconds`, ...) and the
    chosen side's short run, which the final training continues (Trainer warm_start): only the other
    candidates' runs are spent on the search alone. Needs good and defective images in both splits (the caller
    checks)."""
    world = world or World()
    started = time.perf_counter()
    default = default_size(sizes)
    share = config.input_size_search_share * config.budget_minutes / len(sizes)  # minutes; 0 = no budget
    runs: dict[int, tuple[Any, ...]] = {}
    results_by_size: dict[int, TrainResult] = {}
    skipped: list[dict[str, Any]] = []
    for size in [default, *(s for s in sizes if s != default)]:  # the default first: its run is never wasted
        if size != default and share > 0:
            needed = world.agree(least_seconds(results_by_size[default], (size / default) ** 2))
            left = world.agree(len(sizes) * share * 60.0 - (time.perf_counter() - started))
            if needed > left:
                skipped.append({"input_size": size, "least_seconds": round(needed, 1), "share_left_s": round(left, 1)})
                log.info(f"input size {size} px: not tried, its short run needs ~{needed:.0f} s, {left:.0f} s left")
                continue
        t0 = time.perf_counter()
        short = config.replace(input_size=size, phase2_epochs=min(config.phase2_epochs, SEARCH_PHASE2_EPOCHS))
        short = short.replace(budget_minutes=share) if share > 0 else short
        spec = preprocessing_for(short)
        torch.manual_seed(config.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            model = build_model(
                config.backbone,
                input_size=size,
                weights=Path(config.weights) if config.weights else None,
                dropout=config.dropout,
                pooling=config.pooling,
            )
        result = Trainer(model, short, dataset, split, spec, progress=False, world=world).run()
        logits, labels = validation_logits(result.model, dataset, split, spec, config, world)
        phases = [h.phase for h in result.history]
        runs[size] = (logits, result.best["val_loss"], phases.count(1), phases.count(2), time.perf_counter() - t0)
        results_by_size[size] = result
        log.info(f"input size {size} px: short run, validation AUC {roc_auc(labels, logits):.4f}")
    results = []
    for size, (logits, loss, p1, p2, seconds) in sorted(runs.items()):
        gain, lower = (
            (0.0, 0.0)
            if size == default
            else auc_gain_bound(labels, logits, runs[default][0], config.seed, confidence=CONFIDENCE)
        )
        results.append(Candidate(size, roc_auc(labels, logits), loss, p1, p2, seconds, gain, lower))
    chosen, reason = choose(results, default)
    if skipped:
        reason += f"; not tried for lack of budget: {', '.join(str(k['input_size']) + ' px' for k in skipped)}"
    log.info(f"input size search: {reason}")
    record = {
        "method": f"short run of the recipe per side (Phase I, then at most {SEARCH_PHASE2_EPOCHS} Phase II epochs, "
        "the same time share each), scored by the validation ROC AUC; another side replaces the default only if "
        f"its AUC gain clears 0 at {CONFIDENCE:.0%} confidence (paired stratified bootstrap, {BOOTSTRAP} resamples)",
        "default": default,
        "candidates": [c.to_dict() for c in results],
        "not_tried": skipped,
        "chosen": chosen.input_size,
        "reason": reason,
        "val_images": len(labels),
        "val_defective": int(labels.sum()),
        "minutes_per_candidate": round(share, 3) if share > 0 else None,
        "seconds": round(world.agree(time.perf_counter() - started), 2),
        "continued": f"the final training continues the {chosen.input_size} px short run (Phase II, warm restart)",
    }
    return record, results_by_size[chosen.input_size]
