#!/usr/bin/env python3
"""Training benchmark: Phase I with and without the feature cache, Phase II, and the exported model in
ONNX Runtime. Prints figures only (ratios against baselines measured in the same run; the machine is shared).

    source scripts/env.sh && python bench/bench_training.py [--backbone efficientnet_lite0] [--images 48]
        [--epochs 40] [--threads 0]

All through the real training code (qc_cloud.training.trainer.Trainer), on images from the cell's synthetic
generator (512 x 512 PNGs, as the default demo model is trained on), 224 x 224 model input, batch 16:
1. Phase I without cache: every epoch loads, augments and preprocesses each image, runs the frozen base and
   trains the head. images/s per epoch (best timed epoch after a warm-up epoch: the machine is shared).
2. Phase I with cache: the base runs once per (image, augmentation draw) up front; epochs train the head on
   cached features. Cache build images/s, head-only images/s per epoch, and the effective images/s of a
   whole Phase I of --epochs epochs (images x epochs / (cache time + epochs x epoch time)) against (1).
3. Phase II (top 40% of the base unfrozen): images/s, forward + backward + Adam step.
   Reference: one full forward+backward of B0 at batch 16, 224 x 224 (the issue's known figure: ~1.66 s).
4. Exported model (ONNX opset 17, fp32) in ONNX Runtime on the CPU: batch-1 latency p50/p90 and batch-8
   throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.evaluate import OnnxScorer
from qc_cloud.training.export import export_onnx
from qc_cloud.training.models import build_model
from qc_cloud.training.pipeline import preprocessing_for
from qc_cloud.training.splits import stratified_split
from qc_cloud.training.trainer import Trainer
from qc_contract.synthetic import write_mvtec_dataset

MEASURED_EPOCHS = 2  # epochs timed for the per-epoch figures (after one warm-up epoch), best one reported


def trainer_for(config: TrainConfig, dataset, split) -> Trainer:
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model(config.backbone, input_size=config.input_size)
    trainer = Trainer(model, config, dataset, split, preprocessing_for(config), progress=False)
    if not model.pretrained:  # B0 from scratch: batch-norm statistics first, as Trainer.run() does
        trainer.calibrate()
    return trainer


def steady_images_per_s(trainer: Trainer, phase: int) -> float:
    """Best epoch after the first (warm-up): on a shared machine the least disturbed figure."""
    rates = [h.train_images_per_s for h in trainer.history if h.phase == phase]
    return max(rates[1:] if len(rates) > 1 else rates)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=("efficientnet_lite0", "efficientnet_b0"))
    parser.add_argument("--images", type=int, default=64, help="training images (the train split's size)")
    parser.add_argument("--epochs", type=int, default=40, help="Phase I length for the effective-throughput figure")
    parser.add_argument("--draws", type=int, default=4, help="augmentation draws cached per image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    logging.getLogger("qc_cloud").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone {args.backbone}, input 224x224")

    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        # Train split ~= 60% of the data set: size the data set so the train split holds ~args.images images.
        n_total = int(args.images / 0.6)
        n_defect_each = max(3, n_total // 10)
        root = write_mvtec_dataset(
            Path(tmp) / "data",
            n_train_good=n_total - 4 * n_defect_each - 6,
            n_test_good=6,
            n_test_per_defect=n_defect_each,
            width=512,
            height=512,
            seed=0,
        )
        dataset = load_dataset(root, progress=False)
        split = stratified_split(dataset, val_fraction=0.15, test_fraction=0.25, seed=0)
        n_train = len(split.samples(dataset, "train"))
        print(f"data: {len(dataset.samples)} synthetic 512x512 images, {n_train} in the train split\n")
        base = TrainConfig(
            backbone=args.backbone,
            batch_size=16,
            early_stopping_patience=1000,
            cache_draws=args.draws,
            budget_minutes=0,
        )

        # 1. Phase I without the cache
        t = trainer_for(
            base.replace(feature_cache=False, phase1_epochs=MEASURED_EPOCHS + 1, phase2_epochs=0), dataset, split
        )
        t.phase1()
        uncached = steady_images_per_s(t, 1)
        print("Phase I (base frozen, head trains)")
        print(f"  no cache:    {uncached:8.1f} images/s per epoch (load + augment + preprocess + base + head)")

        # 2. Phase I with the cache
        t = trainer_for(
            base.replace(feature_cache=True, phase1_epochs=MEASURED_EPOCHS + 1, phase2_epochs=0), dataset, split
        )
        t.phase1()
        n_val = len(split.samples(dataset, "val"))
        cache_s = t.timings["phase1_feature_cache_s"]
        cache_rate = (n_train * args.draws + n_val) / cache_s
        head_rate = steady_images_per_s(t, 1)
        effective_uncached_s = args.epochs * n_train / uncached
        effective_cached_s = cache_s + args.epochs * n_train / head_rate
        print(
            f"  cache build: {cache_rate:8.1f} images/s ({args.draws} draws x {n_train} train + {n_val} val images, "
            f"{cache_s:.1f} s)"
        )
        print(f"  cached epoch:{head_rate:8.0f} images/s (head only)")
        print(
            f"  a {args.epochs}-epoch Phase I: no cache {effective_uncached_s:7.1f} s "
            f"({args.epochs * n_train / effective_uncached_s:.1f} images/s), cache {effective_cached_s:6.1f} s "
            f"({args.epochs * n_train / effective_cached_s:.1f} images/s): "
            f"x{effective_uncached_s / effective_cached_s:.1f} faster with the cache\n"
        )

        # 3. Phase II
        t = trainer_for(
            base.replace(feature_cache=True, phase1_epochs=1, phase2_epochs=MEASURED_EPOCHS + 1), dataset, split
        )
        t.run()
        phase2 = steady_images_per_s(t, 2)
        print(
            f"Phase II (top 40% of the base unfrozen, lr 1e-5): {phase2:.1f} images/s "
            f"(x{uncached / phase2:.1f} slower than an uncached Phase I epoch)"
        )
        with contextlib.redirect_stdout(io.StringIO()):
            full = build_model(args.backbone, input_size=224).train()
        x, y = torch.randn(16, 3, 224, 224), torch.rand(16, 1)
        steps = []
        for _ in range(3):
            start = time.perf_counter()
            torch.nn.functional.binary_cross_entropy_with_logits(full(x), y).backward()
            steps.append(time.perf_counter() - start)
        full_step = min(steps[1:])
        print(
            f"  reference: all layers trainable, forward+backward batch 16: {full_step:.2f} s "
            f"= {16 / full_step:.1f} images/s\n"
        )

        # 4. ONNX Runtime
        model = t.model.eval()
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", input_size=224, features=True)
        scorer = OnnxScorer(onnx_path)
        one = np.random.default_rng(0).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
        eight = np.repeat(one, 8, axis=0)
        for _ in range(5):
            scorer.logits(one)
        latencies = []
        for _ in range(60):
            start = time.perf_counter()
            scorer.logits(one)
            latencies.append((time.perf_counter() - start) * 1000)
        batch_times = []
        for _ in range(10):
            start = time.perf_counter()
            scorer.logits(eight)
            batch_times.append(time.perf_counter() - start)
        print(
            f"ONNX Runtime (CPU, fp32, {onnx_path.stat().st_size / 1e6:.1f} MB): batch 1 p50 "
            f"{percentile(latencies, 50):.1f} ms, p90 {percentile(latencies, 90):.1f} ms; batch 8 "
            f"{8 / statistics.median(batch_times):.0f} images/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
