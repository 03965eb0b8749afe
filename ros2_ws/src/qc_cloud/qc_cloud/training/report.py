"""Evaluation report: report.json (everything, machine-readable), report.md (for people) and PNG plots
(ROC, precision-recall, score histogram with the decision bands, training curves)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt
import numpy as np

from qc_cloud.training.evaluate import Evaluation, pr_curve, roc_curve

PLOTS_DIR = "plots"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- plots ----------------------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_roc(evaluation: Evaluation, path: Path) -> Path:
    fpr, tpr, _ = roc_curve(evaluation.labels, evaluation.scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, drawstyle="steps-post", label=f"AUC {_fmt(evaluation.metrics['roc_auc'])}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(
        xlabel="false positive rate (good flagged)",
        ylabel="true positive rate (defects found)",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(evaluation: Evaluation, path: Path) -> Path:
    recall, precision, _ = pr_curve(evaluation.labels, evaluation.scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(
        np.concatenate([[0.0], recall]),
        np.concatenate([[1.0], precision]),
        drawstyle="steps-post",
        label=f"AP {_fmt(evaluation.metrics['average_precision'])}",
    )
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_histogram(evaluation: Evaluation, path: Path, low: float, high: float) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    labels = evaluation.labels
    ax.hist(evaluation.scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    ax.hist(evaluation.scores[labels == 1], bins=bins, alpha=0.6, label="defective", color="tab:red")
    for t, name in ((low, "re-inspect"), (high, "defective")):
        ax.axvline(t, color="black", linestyle="--", linewidth=0.8)
        ax.text(t, 0.6, f" {name} >= {t}", fontsize=7, va="top", transform=ax.get_xaxis_transform())
    ax.set(xlabel="P(defect)", ylabel="parts", title="Scores and the decision bands")
    ax.set_yscale("symlog", linthresh=5)
    ax.legend(loc="upper center")
    return _save(fig, path)


def plot_reliability(calibration: dict[str, Any], path: Path) -> Path:
    """Reliability diagram of the test split before and after calibration (observed defect frequency against the
    mean predicted probability per bin; the diagonal is perfect calibration)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for key, name, colour in (
        ("reliability_before", "before", "tab:orange"),
        ("reliability_after", "after", "tab:blue"),
    ):
        rows = [r for r in calibration.get(key, []) if r["n"]]
        ece = calibration.get(f"test_ece_{name}")
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label=label, color=colour)
    ax.set(xlabel="mean predicted P(defect)", ylabel="observed defect frequency", title="Reliability (test split)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_training(history: list[dict[str, Any]], path: Path) -> Path:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.5))
    step = np.arange(1, len(history) + 1)
    ax_loss.plot(step, [h["train_loss"] for h in history], label="train loss")
    ax_loss.plot(step, [h["val_loss"] for h in history], label="val loss")
    ax_val.plot(step, [h["val_accuracy"] for h in history], label="val accuracy")
    ax_val.plot(step, [h["val_auc"] for h in history], label="val ROC AUC")
    boundary = next((i for i, h in enumerate(history) if h["phase"] == 2), None)
    for ax in (ax_loss, ax_val):
        if boundary:
            ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(boundary + 0.6, ax.get_ylim()[1], "phase II", fontsize=7, va="top")
        ax.set_xlabel("epoch (phase I, then phase II)")
        ax.legend()
    ax_loss.set(ylabel="weighted BCE", title="Loss")
    ax_val.set(title="Validation")
    return _save(fig, path)


# -- documents ------------------------------------------------------------------------------------------


def _size_search_lines(search: dict[str, Any] | None) -> list[str]:
    """How the input side was chosen (training/input_size.py), every candidate's validation score."""
    if not search:
        return []
    if search.get("skipped"):
        return [f"- input size search: not run ({search['skipped']}); {search['chosen']} px from the images"]
    scores = ", ".join(
        f"{c['input_size']} px AUC {_fmt(c['val_auc'])}"
        + ("" if c["input_size"] == search["default"] else f" (gain lower bound {_fmt(c['auc_gain_lower_bound'])})")
        for c in search["candidates"]
    )
    return [
        f"- input size search (a short run of the recipe per side, scored on the {search['val_images']} validation "
        f"images, {_fmt(search['seconds'], 0)} s taken out of the budget): {scores} -> **{search['chosen']} px**: "
        f"{search['reason']} (the images suggested {search.get('from_images', '?')} px)"
    ]


def _markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    test = report["test"]
    bands = test["bands"]
    model, data = report["model"], report["dataset"]
    cm = test["confusion_matrix"]
    lines = [
        f"# Evaluation report: {model.get('architecture', '?')} {model.get('version', '')}".rstrip(),
        "",
        f"{report.get('scope', 'Held-out **test split**')}: {test['n_images']} images "
        f"({test['n_good']} good, {test['n_defective']} defective) "
        f"of the data set `{data.get('name', data.get('root', '?'))}` ({data.get('layout', '?')} layout, "
        f"fingerprint `{str(data.get('fingerprint', ''))[:16]}`). Scored by the exported ONNX model in ONNX Runtime, "
        "through the edge's own preprocessing.",
        "",
        "## Headline metrics (threshold " + _fmt(test["threshold"], 2) + ")",
        "",
        "| accuracy | precision | recall | F1 | ROC AUC | average precision |",
        "|---|---|---|---|---|---|",
        f"| {_fmt(test['accuracy'])} | {_fmt(test['precision'])} | {_fmt(test['recall'])} | {_fmt(test['f1'])} "
        f"| {_fmt(test['roc_auc'])} | {_fmt(test['average_precision'])} |",
        "",
        "Confusion matrix (rows: truth, columns: prediction):",
        "",
        "| | predicted good | predicted defective |",
        "|---|---|---|",
        f"| good | {cm['tn']} | {cm['fp']} |",
        f"| defective | {cm['fn']} | {cm['tp']} |",
        "",
        f"## Decision bands of the cell (Normal < {bands['low']} <= Re-inspect < {bands['high']} <= Defective)",
        "",
        "| | share |",
        "|---|---|",
        f"| parts called Normal | {_pct(bands['fraction_normal'])} |",
        f"| parts sent to re-inspection | {_pct(bands['fraction_reinspect'])} |",
        f"| parts called Defective | {_pct(bands['fraction_defective'])} |",
        f"| **defect escape rate** (defective parts called Normal) | **{_pct(bands['defect_escape_rate'])}** |",
        f"| **false reject rate** (good parts called Defective) | **{_pct(bands['false_reject_rate'])}** |",
        f"| defective parts sent to re-inspection | {_pct(bands['defects_reinspected'])} |",
        f"| good parts sent to re-inspection | {_pct(bands['good_reinspected'])} |",
        "",
        "## Per defect type",
        "",
        "| type | images | mean P(defect) | Normal | Re-inspect | Defective |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in test["per_type"].items():
        lines.append(
            f"| {name} | {row['n']} | {_fmt(row['mean_score'])} | {row['normal']} | {row['reinspect']} "
            f"| {row['defective']} |"
        )
    if "split" in data:
        lines += ["", "## Data split (stratified by defect type, seed " + str(data.get("split_seed", "?")) + ")", ""]
        lines += [
            "| split | " + " | ".join(sorted(data["per_type"])) + " |",
            "|---" * (len(data["per_type"]) + 1) + "|",
        ]
        for split_name, counts in data["split"].items():
            lines.append(
                f"| {split_name} | " + " | ".join(str(counts.get(t, 0)) for t in sorted(data["per_type"])) + " |"
            )
    training = report.get("training")
    anomaly = report["model"].get("anomaly")
    if anomaly:
        mapping, parity = training["score_mapping"]["scale_shift"], anomaly["parity"]
        lines += [
            "",
            "## Anomaly model (good parts only, PatchCore-style)",
            "",
            f"- memory bank: {anomaly['bank']} patch features ({anomaly['feature_dim']}-d, base blocks "
            f"{anomaly['layers']}) coreset-subsampled from {anomaly['patches']} patches of the good training images",
            f"- image AUROC {_fmt(anomaly['image_auroc'])}, pixel AUROC {_fmt(anomaly['pixel_auroc'])} (test split)",
            f"- score mapped to [0, 1] on held-out good parts: "
            f"P = sigmoid({mapping[0]:.4g} * score + {mapping[1]:.4g})",
            f"- PyTorch vs ONNX Runtime: max |score diff| {parity['max_abs_score_diff']:.1e}, max |map diff| "
            f"{parity['max_abs_map_diff']:.1e}",
            f"- training wall time: {_fmt(training['seconds'], 0)} s; command: `{training['command']}`",
        ]
        good = report.get("good_parts") or {}
        if good:
            lines += [
                f"- held-out good parts (test, {good['n_test_good']}): {_pct(good['test_good_at_or_above_0.5'])} "
                f"score at or above 0.5 (expected {_pct(good['expected_good_at_or_above_0.5'])} from "
                f"{good['n_val_good']} validation good parts), {_pct(good['test_good_reinspect_or_worse'])} "
                f"re-inspected or worse, {_pct(good['test_good_rejected'])} rejected (false alarms)",
            ]
            if good["no_defects"]:
                lines.append("- **no defective images**: escape rate and AUROC cannot be measured (see the caveats)")
    elif training:
        best, cfg = training["best"], training["config"]
        cache = f"on ({cfg['cache_draws']} augmentation draws per image)" if cfg["feature_cache"] else "off"
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in training["timings"].items())
        lines += [
            "",
            "## Training",
            "",
            f"- backbone `{model['architecture']}`, input {model['input_size']} px, seed {cfg['seed']}",
            *_size_search_lines(training.get("input_size_search")),
            f"- Phase I (base frozen, Adam lr {cfg['phase1_lr']}): {training['epochs'].get('1', 0)} epoch(s), "
            f"feature cache {cache}",
            f"- Phase II (top {round(100 * cfg['unfreeze_fraction'])} % of the base's layers unfrozen, "
            f"{training['unfrozen_layers']} layers, batch norm frozen, Adam lr {cfg['phase2_lr']}): "
            f"{training['epochs'].get('2', 0)} epoch(s)",
            f"- class weights (good, defective): {_fmt(training['class_weights']['good'])}, "
            f"{_fmt(training['class_weights']['defect'])}",
            f"- best checkpoint: phase {best['phase']} epoch {best['epoch']}, "
            f"validation loss {_fmt(best['val_loss'], 4)}",
            f"- training wall time: {_fmt(training['seconds'], 0)} s ({stages})",
            f"- command: `{training['command']}`",
        ]
    lines += _calibration_lines(report.get("calibration"), report.get("edge_cost"))
    parity = model.get("parity")
    if parity:
        lines += [
            "",
            "## Export",
            "",
            f"- ONNX opset {model['opset']}, dynamic batch, {'fp16' if model['fp16'] else 'fp32'}, "
            f"{model['size_bytes'] / 1e6:.1f} MB, sha256 `{model['sha256'][:16]}...`",
            f"- parity with PyTorch on {parity['batch_sizes'][0]} test images: max |logit diff| "
            f"{parity['max_abs_logit_diff']:.1e}, max |P diff| {parity['max_abs_prob_diff']:.1e}",
        ]
    if report.get("caveats"):
        lines += ["", "## Caveats", ""] + [f"- {c}" for c in report["caveats"]]
    lines += ["", "## Plots", ""] + [f"![{name}]({rel})" for name, rel in plots.items()]
    return "\n".join(lines) + "\n"


def _calibration_lines(cal: dict[str, Any] | None, cost: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if cost:
        lines += [
            "",
            "## Input size and edge cost",
            "",
            f"- model input {cost['input_size']} x {cost['input_size']} px: about x{cost['relative_to_224']} the "
            "compute of a 224 px input per part (see bench/bench_training.py for measured latency)",
        ]
    if not cal:
        return lines
    lines += ["", "## Calibration and proposed bands", ""]
    if cal.get("scale_shift"):
        scale, shift = cal["scale_shift"]
        lines.append(
            f"- {cal['method']} calibration fitted on {cal['n_val']} validation images: "
            f"P = sigmoid({scale:.4g} * logit + {shift:.4g}) (stored in the manifest, applied by the edge)"
        )
    else:
        lines.append(f"- no calibration applied (method {cal['method']})")
    lines.append(
        f"- expected calibration error, test split: {_fmt(cal.get('test_ece_before'))} before, "
        f"{_fmt(cal.get('test_ece_after'))} after (validation: {_fmt(cal.get('val_ece_before'))} -> "
        f"{_fmt(cal.get('val_ece_after'))})"
    )
    bands = cal.get("proposed_bands") or {}
    if bands.get("low") is not None:
        verdict = "can be met" if bands["feasible"] else "can NOT be met"
        lines.append(
            f"- targets: escape <= {_pct(bands['target_escape'])}, re-inspection <= {_pct(bands['reinspect_budget'])}, "
            f"false reject <= {_pct(bands['max_false_reject'])}: "
            f"{verdict} on the validation split with bands low {bands['low']:.4f} / high {bands['high']:.4f} "
            f"(escape {_pct(bands['escape_rate'])}, re-inspect {_pct(bands['reinspect_share'])}, false reject "
            f"{_pct(bands['false_reject_rate'])})"
        )
        on_test = cal.get("proposed_bands_on_test")
        if on_test:
            lines.append(
                f"- the same bands on the test split: escape {_pct(on_test['defect_escape_rate'])}, re-inspect "
                f"{_pct(on_test['fraction_reinspect'])}, false reject {_pct(on_test['false_reject_rate'])}"
            )
        if bands.get("reason"):
            lines.append(f"- {bands['reason']}")
        first = bands.get("escape_first")
        if first:
            lines.append(
                f"- meeting the escape target instead would take bands low {first['low']:.4f} / high "
                f"{first['high']:.4f}: re-inspect {_pct(first['reinspect_share'])}, false reject "
                f"{_pct(first['false_reject_rate'])}"
            )
        lines.append(
            "- to use them, set the decision node's `reinspect_threshold` / `defective_threshold` to these values"
        )
    return lines


def write_report(
    out_dir: Path, report: dict[str, Any], evaluation: Evaluation, history: list[dict[str, Any]] | None = None
) -> dict[str, Path]:
    """Write report.json, report.md and plots/*.png into out_dir; returns the written paths by name."""
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    bands = evaluation.metrics["bands"]
    written = {}
    if evaluation.metrics["n_defective"] and evaluation.metrics["n_good"]:  # curves need both classes
        written["roc"] = plot_roc(evaluation, plots_dir / "roc.png")
        written["precision_recall"] = plot_pr(evaluation, plots_dir / "precision_recall.png")
    written["score_histogram"] = plot_histogram(
        evaluation, plots_dir / "score_histogram.png", bands["low"], bands["high"]
    )
    if history:
        written["training_curves"] = plot_training(history, plots_dir / "training_curves.png")
    if report.get("calibration", {}).get("reliability_after"):
        written["reliability"] = plot_reliability(report["calibration"], plots_dir / "reliability.png")
    rel = {name: path.relative_to(out_dir).as_posix() for name, path in written.items()}
    full = {**report, "plots": rel, "test_images": evaluation.per_image()}
    if history:
        full["history"] = history
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(_json_safe(full), indent=1) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(_json_safe(full), rel))
    return {"json": json_path, "markdown": md_path, **written}
