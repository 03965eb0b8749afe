"""Two-phase transfer learning of the defect classifier.

Phase I   base frozen (inference mode), head trained with Adam at phase1_lr, on cached pooled features
          (features_cache.py) or, with feature_cache off, by running the base every epoch; runs until the
          validation loss stops improving (phase1_patience epochs), phase1_epochs at most.
Phase II  top `unfreeze_fraction` of the base's layers unfrozen, fresh augmentation every epoch. Adaptive
          recipe: discriminative learning rates (phase2_lr for the head and the top block, x layer_decay per
          block further down), a linear warm-up then a cosine schedule whose length is what fits into the
          time budget (budget_minutes, measured on the first epoch). Paper preset: one lr, reduce-on-plateau.
Both      binary cross-entropy weighted per class (n / (2 n_class) from the training split, the defective
          class further x escape_cost), early stopping on the validation loss, best checkpoint (lowest
          validation loss over both phases) restored at the end.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)
from tqdm import tqdm

from qc_cloud.training.batches import input_batches
from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.distributed import World
from qc_cloud.training.errors import TrainingError
from qc_cloud.training.evaluate import roc_auc
from qc_cloud.training.features_cache import FeatureCache
from qc_cloud.training.models import (
    DefectClassifier,
    calibrate_batchnorm,
    freeze_base,
    layerwise_groups,
    set_train_mode,
    trainable_parameters,
    unfreeze_top,
)
from qc_cloud.training.splits import Split
from qc_contract.model_manifest import Preprocessing

log = logging.getLogger(__name__)

MIN_IMPROVEMENT = 1e-4  # a validation loss must drop by this much to count as better
CACHE_BUDGET_SHARE = 0.25  # at most this share of the time budget goes into the Phase I feature cache


@dataclass
class EpochRecord:
    phase: int
    epoch: int  # within the phase, from 1
    lr: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float
    seconds: float  # the whole epoch, validation included
    train_images_per_s: float  # the training part only (per epoch with a feature cache: head only)


@dataclass
class TrainResult:
    model: DefectClassifier  # with the best weights loaded
    history: list[EpochRecord]
    best: dict[str, Any]  # phase, epoch, val_loss
    class_weights: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    unfrozen_layers: int = 0

    def history_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.history]


def class_weights(samples: list[Sample], escape_cost: float = 1.0) -> tuple[float, float]:
    """(good, defective) weights n / (2 n_class), so both classes contribute equally to the loss; the defective
    weight is then multiplied by `escape_cost` (what missing a defect costs relative to rejecting a good part)."""
    n = len(samples)
    n_defect = sum(s.label for s in samples)
    n_good = n - n_defect
    if n_good == 0 or n_defect == 0:
        raise ValueError("class weights need both classes in the training split")
    return n / (2.0 * n_good), escape_cost * n / (2.0 * n_defect)


def cosine_factor(epoch: int, total: int, warmup: int, floor: float) -> float:
    """Learning-rate multiplier of epoch `epoch` (from 0): linear warm-up over `warmup` epochs, then a cosine from
    1 down to `floor` at the last of `total` epochs."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(total - warmup - 1, 1)  # the last epoch (total - 1) reaches the floor
    t = min(max(epoch - warmup, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Every parameter group's learning rate = its base rate x factor (the optimizer holds the groups' own dicts,
    so the base rates are kept apart)."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


class _PhaseControl:
    """Reduce-LR-on-plateau + early stopping + best-checkpoint bookkeeping on the validation loss."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        best_loss: float,
        patience: int,
        *,
        plateau: bool = True,
    ) -> None:
        self.scheduler = (
            None
            if not plateau
            else torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                threshold=MIN_IMPROVEMENT,
                threshold_mode="abs",
                min_lr=config.min_lr,
            )
        )
        self.patience = patience
        self.best_loss = best_loss
        self.stale_epochs = 0

    def step(self, val_loss: float) -> tuple[bool, bool]:
        """(improved, stop)"""
        if self.scheduler is not None:
            self.scheduler.step(val_loss)
        improved = val_loss < self.best_loss - MIN_IMPROVEMENT
        if improved:
            self.best_loss, self.stale_epochs = val_loss, 0
        else:
            self.stale_epochs += 1
        return improved, self.stale_epochs > self.patience


class Trainer:
    def __init__(
        self,
        model: DefectClassifier,
        config: TrainConfig,
        dataset: Dataset,
        split: Split,
        spec: Preprocessing,
        *,
        progress: bool = True,
        world: World | None = None,
        budget_spent: float = 0.0,
        warm_start: TrainResult | None = None,
    ) -> None:
        """budget_spent: seconds of config.budget_minutes already spent before this training (the input-size
        search); the phases fit into what is left. warm_start: a finished shorter run of this model (the input-size
        search's, `model` is its model): its history and best checkpoint are kept, Phase I is not repeated and
        Phase II continues from its best checkpoint (a warm restart of the schedule)."""
        self.model, self.config, self.dataset, self.spec = model, config, dataset, spec
        self.budget_spent = budget_spent
        self.warm_start = warm_start
        self.world = world or World()
        self.progress = progress and self.world.is_main
        self.train_samples = split.samples(dataset, "train")
        self.val_samples = split.samples(dataset, "val")
        w_good, w_defect = class_weights(self.train_samples, config.escape_cost)
        self.weights = torch.tensor([w_good, w_defect], dtype=torch.float32)
        self.history: list[EpochRecord] = []
        self.best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.best: dict[str, Any] = {"phase": 0, "epoch": 0, "val_loss": math.inf}
        self.timings: dict[str, float] = {}
        self.stopped_by: str | None = None
        self._started = time.perf_counter()
        self.phase2_before = 0  # Phase II epochs of the warm start (draw numbers continue after them)
        if warm_start is not None:
            self.history = list(warm_start.history)
            self.best = dict(warm_start.best)
            self.best_state = copy.deepcopy(warm_start.model.state_dict())
            self.phase2_before = sum(1 for h in warm_start.history if h.phase == 2)

    # -- loss and validation -------------------------------------------------------------------------

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = self.weights[labels.long()]
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels, weight=weight)

    def _validate_logits(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
        t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
        val_loss = float(self.loss(t_logits, t_labels))
        accuracy = float(np.mean((logits > 0) == (labels > 0.5)))
        return val_loss, accuracy, roc_auc(labels, logits)

    def _validate_full(self) -> tuple[float, float, float]:
        """The whole validation split (under torchrun: each process scores its share, the shares are summed)."""
        self.model.eval()
        logits = np.zeros(len(self.val_samples), dtype=np.float32)
        mine = self.world.share(range(len(self.val_samples)))
        with torch.inference_mode():
            for inputs, _, chunk in input_batches(
                self.dataset, self.val_samples, self.spec, self.config.batch_size, order=mine
            ):
                logits[chunk] = self.model(torch.from_numpy(inputs)).reshape(-1).numpy()
        labels = np.asarray([s.label for s in self.val_samples], dtype=np.float32)
        return self._validate_logits(self.world.sum_rows(logits), labels)

    # -- epochs --------------------------------------------------------------------------------------

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.progress)

    def _run_epoch(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], forward, optimizer, desc: str
    ) -> tuple[float, float]:
        """One pass over the training split: (mean loss, images per second)."""
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        with self._bar(len(self.train_samples), desc) as bar:
            for x, y in batches:
                set_train_mode(self.model, train_batchnorm=self.config.train_batchnorm)
                optimizer.zero_grad(set_to_none=True)
                loss = self.loss(forward(x), y)
                if not torch.isfinite(loss):
                    raise TrainingError(f"{desc}: the training loss became {loss.item()} (diverged); lower the lr")
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(y)
                seen += len(y)
                bar.update(len(y))
                bar.set_postfix(loss=f"{loss.item():.4f}")
        return total_loss / max(seen, 1), seen / max(time.perf_counter() - start, 1e-9)

    def _fresh_batches(self, epoch_seed: int, rng: np.random.Generator, *, frozen_base: bool):
        """Batches of freshly augmented images; with a frozen base, its pooled features (no graph kept)."""
        order = rng.permutation(len(self.train_samples))
        if self.world.active and not frozen_base:  # Phase II: each global batch split between the processes
            size, b = self.world.size, self.config.batch_size
            starts = [s for s in range(0, len(order), b) if len(order[s : s + b]) >= size]
            chunks = [self.world.share(order[s : s + b]) for s in starts]
        else:
            chunks = [None]
        for chunk in chunks:
            yield from self._batches_of(
                epoch_seed,
                order if chunk is None else chunk,
                frozen_base,
                self.config.batch_size if chunk is None else len(chunk),
            )

    def _batches_of(self, epoch_seed: int, order, frozen_base: bool, batch_size: int):
        for inputs, labels, _ in input_batches(
            self.dataset,
            self.train_samples,
            self.spec,
            batch_size,
            augmentation=self.config.augmentation,
            seed=self.config.seed,
            draw=epoch_seed,
            order=order,
        ):
            x = torch.from_numpy(inputs)
            if frozen_base:
                self.model.eval()
                with torch.no_grad():
                    x = self.model.pooled(x)
            yield x, torch.from_numpy(labels)

    def _record(
        self,
        phase: int,
        epoch: int,
        optimizer,
        train: tuple[float, float],
        val: tuple[float, float, float],
        seconds: float,
        control: _PhaseControl,
    ) -> bool:
        lr = optimizer.param_groups[0]["lr"]
        improved, stop = control.step(val[0])
        train_loss, images_per_s = train
        record = EpochRecord(phase, epoch, lr, train_loss, *val, seconds, images_per_s)
        self.history.append(record)
        if improved:
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best = {"phase": phase, "epoch": epoch, "val_loss": val[0]}
        log.info(
            f"phase {phase} epoch {epoch:3d}  lr {lr:.1e}  train loss {train_loss:.4f}  val loss {val[0]:.4f}  "
            f"val acc {val[1]:.3f}  val auc {val[2]:.3f}  {seconds:.1f} s{'  *' if improved else ''}"
        )
        return stop

    # -- phases --------------------------------------------------------------------------------------

    def phase1(self) -> None:
        cfg = self.config
        freeze_base(self.model)
        optimizer = torch.optim.Adam(trainable_parameters(self.model), lr=cfg.phase1_lr)
        control = _PhaseControl(optimizer, cfg, self.best["val_loss"], cfg.phase1_patience)
        rng = np.random.default_rng([cfg.seed, 1])
        train_cache = val_cache = None
        if cfg.feature_cache:
            start = time.perf_counter()
            val_cache = FeatureCache.build(
                self.model,
                self.dataset,
                self.val_samples,
                self.spec,
                augmentation=None,
                draws=1,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                progress=self.progress,
                desc="caching val features",
                world=self.world,
            )
            draws = self._affordable_draws(time.perf_counter() - start)
            train_cache = FeatureCache.build(
                self.model,
                self.dataset,
                self.train_samples,
                self.spec,
                augmentation=cfg.augmentation,
                draws=draws,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                progress=self.progress,
                desc="caching train features",
                world=self.world,
            )
            self.timings["phase1_feature_cache_s"] = time.perf_counter() - start
        start_phase = time.perf_counter()
        for epoch in range(1, cfg.phase1_epochs + 1):
            start = time.perf_counter()
            if train_cache is not None:
                batches = train_cache.epoch_batches(cfg.batch_size, rng)
            else:
                batches = self._fresh_batches(epoch - 1, rng, frozen_base=True)
            train = self._run_epoch(batches, self.model.classify, optimizer, f"phase I epoch {epoch}")
            if val_cache is not None:
                self.model.eval()
                with torch.inference_mode():
                    logits = self.model.classify(torch.from_numpy(val_cache.features[:, 0])).reshape(-1).numpy()
                val = self._validate_logits(logits, val_cache.labels)
            else:
                val = self._validate_full()
            if self._record(1, epoch, optimizer, train, val, time.perf_counter() - start, control):
                break
        self.timings["phase1_epochs_s"] = time.perf_counter() - start_phase

    def _budget_left(self) -> float:
        """Seconds of the training budget left (inf without a budget)."""
        if not self.config.budget_minutes:
            return math.inf
        return self.config.budget_minutes * 60.0 - self.budget_spent - (time.perf_counter() - self._started)

    def _affordable_draws(self, val_seconds: float) -> int:
        """Augmentation draws of the train cache that fit into CACHE_BUDGET_SHARE of the time budget, measured on
        the validation cache just built (so Phase II, where fine-tuning pays most, keeps most of the budget)."""
        cfg = self.config
        if not cfg.budget_minutes or not self.val_samples:
            return cfg.cache_draws
        per_image = self.world.agree(val_seconds / len(self.val_samples))
        allowed = CACHE_BUDGET_SHARE * max(cfg.budget_minutes * 60.0 - self.budget_spent, 0.0)
        draws = int(max(1, min(cfg.cache_draws, allowed // max(per_image * len(self.train_samples), 1e-9))))
        if draws < cfg.cache_draws:
            log.info(
                f"feature cache: {draws} augmentation draw(s) per image fit into the budget (of {cfg.cache_draws})"
            )
        return draws

    def phase2(self) -> int:
        cfg = self.config
        self.model.load_state_dict(self.best_state)  # fine-tune from the best head
        unfrozen = unfreeze_top(self.model, cfg.unfreeze_fraction, train_batchnorm=cfg.train_batchnorm)
        groups = layerwise_groups(self.model, cfg.phase2_lr, cfg.layer_decay)
        optimizer = torch.optim.Adam(groups, lr=cfg.phase2_lr)
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        forward = self.model
        if self.world.active:  # gradients averaged over the processes; frozen parameters are left out
            forward = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        cosine = cfg.phase2_schedule == "cosine"
        control = _PhaseControl(optimizer, cfg, self.best["val_loss"], cfg.early_stopping_patience, plateau=not cosine)
        rng = np.random.default_rng([cfg.seed, 2, self.phase2_before])
        start_phase = time.perf_counter()
        planned = cfg.phase2_epochs  # the cosine's length: cut to what fits into the budget after epoch 1
        for epoch in range(1, cfg.phase2_epochs + 1):
            if cosine:
                floor = cfg.min_lr / cfg.phase2_lr
                set_lr(optimizer, base_lrs, cosine_factor(epoch - 1, planned, cfg.warmup_epochs, floor))
            start = time.perf_counter()
            # Draw numbers continue after Phase I's, so Phase II never repeats a cached augmentation.
            draw = max(cfg.phase1_epochs, cfg.cache_draws) + self.phase2_before + epoch
            batches = self._fresh_batches(draw, rng, frozen_base=False)
            train = self._run_epoch(batches, forward, optimizer, f"phase II epoch {epoch}")
            val = self._validate_full()
            seconds = self.world.agree(time.perf_counter() - start)
            if self._record(2, epoch, optimizer, train, val, seconds, control):
                break
            left = self.world.agree(self._budget_left())
            if epoch == 1 and math.isfinite(left):
                planned = max(1, min(cfg.phase2_epochs, 1 + int(left // max(seconds, 1e-6))))
                if planned < cfg.phase2_epochs:
                    log.info(f"Phase II: {planned} epochs fit into the budget left")
            if left < seconds or (cosine and epoch >= planned):
                self.stopped_by = "budget" if left < seconds else "schedule"
                break
        self.timings["phase2_s"] = time.perf_counter() - start_phase
        return unfrozen

    def calibrate(self) -> None:
        """Batch-norm statistics for a base without pretrained weights (see models.calibrate_batchnorm)."""
        start = time.perf_counter()
        batches = (
            torch.from_numpy(inputs)
            for inputs, _, _ in input_batches(self.dataset, self.train_samples, self.spec, self.config.batch_size)
        )
        seen = calibrate_batchnorm(self.model, batches)
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.timings["batchnorm_calibration_s"] = time.perf_counter() - start
        log.info(f"no pretrained weights: batch-norm statistics calibrated on {seen} training images")

    def run(self) -> TrainResult:
        self._started = time.perf_counter()
        torch.manual_seed(self.config.seed)
        warm = self.warm_start is not None
        if not warm and not self.model.pretrained and "batchnorm_calibration_s" not in self.timings:
            self.calibrate()
        unfrozen = 0
        if self.config.phase1_epochs and not warm:
            self.phase1()
        if self.config.phase2_epochs:
            unfrozen = self.phase2()
        self.model.load_state_dict(self.best_state)
        freeze_base(self.model)
        self.model.eval()
        w_good, w_defect = (float(w) for w in self.weights)
        return TrainResult(
            model=self.model,
            history=self.history,
            best=self.best,
            class_weights={"good": w_good, "defect": w_defect},
            timings=self.timings,
            unfrozen_layers=unfrozen,
        )
