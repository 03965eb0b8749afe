#!/usr/bin/env python3
"""Recipe benchmark (issue 25): the paper's preset, the adaptive default recipe, a logistic regression on frozen
backbone features and the good-parts-only anomaly model, on both synthetic benchmarks, judged on held-out test
images none of them saw (the split is drawn once per benchmark and shared; nothing is tuned on the test part).

    source scripts/env.sh && OMP_NUM_THREADS=1 nice -n 10 python bench/bench_recipes.py \
        [--surface-images 400] [--bottle-images 240] [--size 320] [--budget-minutes 5] [--threads 1]

Per method and benchmark: test accuracy, F1, ROC AUC, escape rate and re-inspect share at the cell's default
bands (0.5 / 0.8), the expected calibration error, the training wall time, and the exported model's edge latency
(ONNX Runtime on the CPU, batch 1, one thread, p50). Everything runs through the real training code
(qc_cloud.training.pipeline.train), as `qc_cloud train` does.

The adaptive recipe's time budget is cut with --budget-minutes so the whole benchmark fits into ~30 minutes on a
shared 2-core machine; its default (25 minutes) is meant for a whole real data set.
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

from qc_cloud.training.batches import input_batches
from qc_cloud.training.calibration import reliability
from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.evaluate import band_analysis, roc_auc, threshold_metrics
from qc_cloud.training.models import build_model
from qc_cloud.training.pipeline import preprocessing_for, train
from qc_cloud.training.splits import stratified_split
from qc_contract.synthetic import write_mvtec_dataset


def edge_latency_ms(model_path: Path, size: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).normal(0, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(15):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    t = threshold_metrics(labels, probs, 0.5)
    b = band_analysis(labels, probs, 0.5, 0.8)
    return {
        "acc": t["accuracy"],
        "f1": t["f1"],
        "auc": roc_auc(labels, probs),
        "escape": b["defect_escape_rate"],
        "reinspect": b["fraction_reinspect"],
        "ece": reliability(probs, labels)["ece"],
    }


def run_pipeline(name: str, config: TrainConfig, root: Path, split_path: Path, out: Path) -> dict[str, float]:
    start = time.perf_counter()
    run = train(config, data_root=root, out_dir=out, split_path=split_path, progress=False, command=f"bench {name}")
    seconds = time.perf_counter() - start
    ev = run.evaluation
    figures = summarize(ev.labels, ev.scores)
    size = run.manifest.preprocessing.input_width
    figures.update(train_s=seconds, input=size, edge_ms=edge_latency_ms(out / "model.onnx", size))
    search = (run.report.get("training") or {}).get("input_size_search")
    if search and search.get("candidates"):
        scores = ", ".join(
            f"{c['input_size']} px {c['val_auc']:.3f} (P2 epochs {c['phase2_epochs']}, gain lower bound "
            f"{c['auc_gain_lower_bound']:+.3f}, {c['seconds']:.0f} s)"
            for c in search["candidates"]
        )
        chosen, seconds = search["chosen"], search["seconds"]
        print(f"  [{name}] input size search, short-run validation AUC: {scores} -> {chosen} px ({seconds} s)")
    if "anomaly" in run.report["model"]:
        figures["pixel_auc"] = run.report["model"]["anomaly"]["pixel_auroc"]
    return figures


def logistic_baseline(dataset, split, size: int, threads: int) -> dict[str, float]:
    """Logistic regression on the frozen (pretrained) base's pooled features at `size` px; its L2 strength chosen
    on the validation split from a small grid."""
    start = time.perf_counter()
    config = TrainConfig(input_size=size)
    spec = preprocessing_for(config)
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model(config.backbone, input_size=size).eval()

    def features(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        with torch.inference_mode():
            for inputs, labels, _ in input_batches(dataset, split.samples(dataset, part), spec, 16):
                xs.append(model.pooled(torch.from_numpy(inputs)))
                ys.append(torch.from_numpy(labels))
        return torch.cat(xs), torch.cat(ys)

    (xtr, ytr), (xva, yva), (xte, yte) = features("train"), features("val"), features("test")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva, xte = (xtr - mu) / sd, (xva - mu) / sd, (xte - mu) / sd
    pos = float(ytr.mean())
    weight = torch.where(ytr > 0.5, 0.5 / pos, 0.5 / (1 - pos))  # balanced, as the trainer's loss
    best = None
    for l2 in (1e-3, 1e-2, 1e-1, 1.0):
        w = torch.zeros(xtr.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure(w=w, b=b, opt=opt, l2=l2):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr, weight=weight)
            loss = loss + l2 * (w * w).sum() / 2
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            val_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(xva @ w + b, yva))
        if best is None or val_loss < best[0]:
            best = (val_loss, w.detach(), b.detach(), l2)
    _, w, b, _ = best
    with torch.no_grad():
        probs = torch.sigmoid(xte @ w + b).numpy()
    figures = summarize(yte.numpy(), probs)
    figures.update(train_s=time.perf_counter() - start, input=size, edge_ms=float("nan"))
    return figures


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    head = (
        f"  {'method':28s} {'input':>5s} {'acc':>6s} {'F1':>6s} {'AUC':>6s} {'escape':>7s} {'re-insp':>7s} {'ECE':>6s}"
    )
    print(head + f" {'train s':>8s} {'edge ms':>8s}")
    for name, r in rows.items():

        def f(v, width=6):
            return f"{'n/a':>{width}s}" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:{width}.3f}"

        extra = f"  pixel AUROC {r['pixel_auc']:.3f}" if r.get("pixel_auc") is not None else ""
        print(
            f"  {name:28s} {r['input']:5d} {f(r['acc'])} {f(r['f1'])} {f(r['auc'])} {f(r['escape'], 7)} "
            f"{f(r['reinspect'], 7)} {f(r['ece'])} {r['train_s']:8.0f} {f(r['edge_ms'], 8)}{extra}"
        )
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surface-images", type=int, default=400, help="images of the harder benchmark")
    parser.add_argument("--bottle-images", type=int, default=240, help="images of the bottle benchmark")
    parser.add_argument("--size", type=int, default=320, help="image side of both benchmarks, pixels")
    parser.add_argument("--defect-share", type=float, default=0.25, help="share of defective parts (imbalance)")
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="the adaptive recipe's time budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--only", choices=("surface", "bottle"), help="one benchmark only")
    parser.add_argument(
        "--methods",
        default="logistic,paper,adaptive,anomaly",
        help="comma-separated subset of the methods (also: adaptive-max, adaptive-gem)",
    )
    args = parser.parse_args()
    logging.getLogger("qc_cloud").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); images {args.size} px, "
        f"{round(100 * args.defect_share)} % defective; adaptive budget {args.budget_minutes} min"
    )
    benchmarks = [("surface", args.surface_images), ("bottle", args.bottle_images)]
    if args.only:
        benchmarks = [b for b in benchmarks if b[0] == args.only]
    with tempfile.TemporaryDirectory(prefix="bench_recipes_") as tmp:
        for product, n in benchmarks:
            n_defect_each = max(2, round(n * args.defect_share / 4))
            n_good = n - 4 * n_defect_each
            root = write_mvtec_dataset(
                Path(tmp) / product,
                n_train_good=n_good - n_good // 4,
                n_test_good=n_good // 4,
                n_test_per_defect=n_defect_each,
                width=args.size,
                height=args.size,
                seed=0,
                product=product,
            )
            dataset = load_dataset(root, progress=False)
            split = stratified_split(dataset, val_fraction=0.15, test_fraction=0.25, seed=0)
            split_path = split.save(Path(tmp) / f"{product}_split.json", dataset)
            print(f"\n[{product}] {len(dataset.samples)} images {dataset.counts()}; split {split.counts(dataset)}")
            rows: dict[str, dict[str, float]] = {}
            methods = set(args.methods.split(","))
            if "logistic" in methods:
                rows["logistic regression, 224"] = logistic_baseline(dataset, split, 224, args.threads)
                print_table(f"{product}: results so far", rows)
            common = {"threads": args.threads, "golden_per_class": 1}
            if "paper" in methods:
                paper = TrainConfig.preset_config("paper", **common)
                rows["paper preset"] = run_pipeline("paper", paper, root, split_path, Path(tmp) / f"{product}_paper")
                print_table(f"{product}: results so far", rows)
            if "adaptive" in methods:
                adaptive = TrainConfig.preset_config("adaptive", budget_minutes=args.budget_minutes, **common)
                out = Path(tmp) / f"{product}_adaptive"
                rows["adaptive (default)"] = run_pipeline("adaptive", adaptive, root, split_path, out)
                print_table(f"{product}: results so far", rows)
            for pooling in ("max", "gem"):  # opt-in methods: the adaptive recipe with another head pooling
                if f"adaptive-{pooling}" in methods:
                    config = TrainConfig.preset_config(
                        "adaptive", budget_minutes=args.budget_minutes, pooling=pooling, **common
                    )
                    out = Path(tmp) / f"{product}_adaptive_{pooling}"
                    rows[f"adaptive, {pooling} pooling"] = run_pipeline("adaptive", config, root, split_path, out)
                    print_table(f"{product}: results so far", rows)
            if "anomaly" in methods:
                anomaly = TrainConfig.preset_config("adaptive", method="anomaly", **common)
                out = Path(tmp) / f"{product}_anomaly"
                rows["anomaly (good parts only)"] = run_pipeline("anomaly", anomaly, root, split_path, out)
            print_table(f"[{product}] held-out test split, bands 0.5 / 0.8", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
