#!/usr/bin/env python3
"""Why the Phase I head is weak on the harder surface benchmark (issue 25, second round): a linear probe on the
frozen pretrained base, by pooling of the last feature map and input size, judged on a VALIDATION split of a
surface data set generated with another seed than bench_recipes.py's (nothing here sees its test split).

    source scripts/env.sh && OMP_NUM_THREADS=1 nice -n 19 python bench/bench_pooling.py \
        [--images 320] [--size 320] [--seed 1] [--inputs 224,320] [--product surface]

The Phase I head sees the globally AVERAGED last feature map (1280 channels). A crack of a few pixels covers a
few of its cells (10 x 10 at 320 px), so averaging dilutes it ~100-fold against the texture and lighting
variation. Max pooling (or GeM, p = 3) keeps the strongest local response. The probe is the same logistic
regression as bench_recipes.py's baseline (balanced weights, L2 chosen on an inner split of train), scored on
the validation split: ROC AUC and average precision per (input size, pooling).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qc_cloud.training.batches import input_batches
from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.evaluate import average_precision, roc_auc
from qc_cloud.training.models import build_model
from qc_cloud.training.pipeline import preprocessing_for
from qc_cloud.training.splits import stratified_split
from qc_contract.synthetic import write_mvtec_dataset

POOLINGS = {
    "average (Phase I head)": lambda f: f.mean(dim=(2, 3)),
    "max": lambda f: f.amax(dim=(2, 3)),
    "GeM p=3": lambda f: f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3),
}


def probe(xtr, ytr, xva, yva, seed: int) -> tuple[float, float, float]:
    """Balanced logistic regression; L2 chosen on a quarter of train held out; (val AUC, val AP, l2)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(len(xtr)))
    inner, fit = order[: len(order) // 4], order[len(order) // 4 :]

    def train(x, y, l2):
        pos = float(y.mean())
        weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, weight=weight)
            loss = loss + l2 * (w * w).sum() / 2
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    best = None
    for l2 in (1e-3, 1e-2, 1e-1, 1.0):
        w, b = train(xtr[fit], ytr[fit], l2)
        auc = roc_auc(ytr[inner].numpy(), (xtr[inner] @ w + b).numpy())
        if best is None or auc > best[0]:
            best = (auc, l2)
    w, b = train(xtr, ytr, best[1])
    scores = (xva @ w + b).numpy()
    return roc_auc(yva.numpy(), scores), average_precision(yva.numpy(), scores), best[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=320, help="image size, px")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (bench_recipes.py uses 0)")
    parser.add_argument("--inputs", default="224,320", help="model input sizes")
    parser.add_argument("--product", default="surface", choices=("surface", "bottle"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_defect_each = max(2, round(args.images * 0.25 / 4))
    n_good = args.images - 4 * n_defect_each
    with tempfile.TemporaryDirectory(prefix="bench_pooling_") as tmp:
        root = write_mvtec_dataset(
            Path(tmp) / args.product,
            n_train_good=n_good - n_good // 4,
            n_test_good=n_good // 4,
            n_test_per_defect=n_defect_each,
            width=args.size,
            height=args.size,
            seed=args.seed,
            product=args.product,
        )
        dataset = load_dataset(root, progress=False)
        split = stratified_split(dataset, val_fraction=0.25, test_fraction=0.15, seed=args.seed)
        print(f"[{args.product}, seed {args.seed}] {len(dataset.samples)} images; split {split.counts(dataset)}")
        print("judged on the VALIDATION split; the test split is not used\n")
        print("| input | pooling | val AUC | val AP | L2 | features s |")
        print("|---|---|---|---|---|---|")
        for size in (int(s) for s in args.inputs.split(",")):
            config = TrainConfig(input_size=size)
            spec = preprocessing_for(config)
            with contextlib.redirect_stdout(io.StringIO()):
                model = build_model(config.backbone, input_size=size).eval()
            start = time.perf_counter()
            maps = {}
            for part in ("train", "val"):
                xs, ys = [], []
                with torch.inference_mode():
                    for inputs, labels, _ in input_batches(dataset, split.samples(dataset, part), spec, 16):
                        xs.append(model.feature_map(torch.from_numpy(inputs)))
                        ys.append(torch.from_numpy(labels))
                maps[part] = (torch.cat(xs), torch.cat(ys))
            seconds = time.perf_counter() - start
            for name, pool in POOLINGS.items():
                (ftr, ytr), (fva, yva) = maps["train"], maps["val"]
                auc, ap, l2 = probe(pool(ftr), ytr, pool(fva), yva, args.seed)
                print(f"| {size} | {name} | {auc:.3f} | {ap:.3f} | {l2:g} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
