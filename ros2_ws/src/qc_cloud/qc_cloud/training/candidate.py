"""Candidate evaluation and the promotion gate (`qc_cloud models evaluate-candidate`).

The candidate package and the package the cells run now are scored on the same images:
- the regression set of a data set version (qc_cloud.training.dataset_versions);
- recent labelled production data, one slice per cell (the re-inspection station's current labels, by the
  time the sample was taken);
- all of them together.
Each model is applied at its own decision bands, as a cell with `bands: from_model` runs it: the manifest's
`decision_bands` when present and feasible (Manifest.applicable_bands), else the cell defaults 0.5/0.8;
`bands` overrides both. Figures per model and slice: defect escape rate, false-reject rate, re-inspect load,
ROC AUC, escape rate per defect type; per model: latency per image on ONNX Runtime (CPU; batch 1; p50/p99),
measured on every image scored.

The gate compares each gated figure, wherever both values exist, and blocks the candidate when it is worse
than the current model beyond the figure's tolerance (rates and AUC: absolute; latency: relative) AND the
paired evidence says the difference is not chance at the gate's `significance` (rates: exact one-sided McNemar
test on the images where exactly one model has the event; AUC: paired stratified bootstrap). On the tens of
labelled parts a cell slice holds, one or two images move a rate by more than any useful tolerance; a gate
that blocks on them blocks every candidate. `significance: null` gates on the point estimates alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from qc_cloud.training.dataset_versions import Sources, Version, add_fleet_labels
from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.errors import ConfigError, DatasetError
from qc_cloud.training.evaluate import OnnxScorer, compute_metrics, score_samples
from qc_cloud.training.paired_stats import auc_gain_bound, mcnemar_worse_p
from qc_contract.model_manifest import Manifest

CELL_DEFAULT_BANDS = (0.5, 0.8)
EXIT_PROMOTABLE, EXIT_BLOCKED = 0, 3

# figure -> (tolerance, how it is compared); None = reported, not gated.
DEFAULT_GATE: dict[str, float | None] = {
    "escape_rate": 0.0,  # absolute: no more defective parts called Normal
    "false_reject_rate": 0.02,  # absolute
    "reinspect_load": 0.05,  # absolute: share of all parts sent to re-inspection
    "roc_auc": 0.02,  # absolute, lower is worse
    "per_type_escape_rate": 0.05,  # absolute, per defect type
    "latency_p99_ms": 1.0,  # relative: up to (1 + x) times the current model's p99
}
# One-sided level at which a worse figure counts as more than chance (null in the gate file: point estimates).
DEFAULT_SIGNIFICANCE = 0.05
SIGNIFICANCE = "significance"
LOWER_IS_WORSE = {"roc_auc"}
RELATIVE = {"latency_p99_ms"}
# A relative latency check ignores differences below this: timer and scheduler noise on a tiny model, not a
# change a cell's time budget could feel.
LATENCY_FLOOR_MS = 0.5


def load_gate(path: Path | None) -> dict[str, float | None]:
    """The gate: DEFAULT_GATE updated by a YAML/JSON mapping figure: tolerance (null = not gated), plus
    `significance` (a level in (0, 1), or null = no test)."""
    gate = {**DEFAULT_GATE, SIGNIFICANCE: DEFAULT_SIGNIFICANCE}
    if path is None:
        return gate
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"gate config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"gate config {path}: a mapping of figure: tolerance ({', '.join(DEFAULT_GATE)})")
    for key, value in data.items():
        if key == SIGNIFICANCE:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and 0 < value < 1):
                raise ConfigError(f"gate config {path}: significance must be a level in (0, 1) or null, got {value!r}")
            gate[key] = None if value is None else float(value)
            continue
        if key not in DEFAULT_GATE:
            raise ConfigError(f"gate config {path}: unknown figure {key!r} (known: {', '.join(DEFAULT_GATE)})")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value)
        ):
            raise ConfigError(f"gate config {path}: {key} must be a tolerance >= 0 or null, got {value!r}")
        gate[key] = None if value is None else float(value)
    return gate


@dataclass
class Slice:
    name: str  # "regression", "cell:<site/line/cell>", "all"
    dataset: Dataset  # for reading
    samples: list[Sample]
    shas: list[str]  # one per sample


def production_slices(
    rows: Iterable[dict[str, Any]], samples_dir: Path, since: datetime | None, cells: Iterable[str] | None = None
) -> tuple[dict[str, list[tuple[str, int, str]]], Sources]:
    """Per cell, [(sha256, label, defect type)] of its labelled samples taken since `since`: deduplicated by
    content; one content labelled two ways in a cell is left out (counted in sources.left_out)."""
    sources = Sources()
    add_fleet_labels(sources, rows, samples_dir, since=since, cells=cells, time_field="sample_time")
    per_cell: dict[str, dict[str, set[tuple[int, str]]]] = {}
    for offer in sources.offers:
        per_cell.setdefault(offer.provenance["cell"], {}).setdefault(offer.sha256, set()).add(offer.key)
    out = {}
    for cell, images in sorted(per_cell.items()):
        kept = []
        for sha, labels in sorted(images.items()):
            if len(labels) > 1:
                sources.count("conflicting labels")
                continue
            label, defect_type = next(iter(labels))
            kept.append((sha, label, defect_type))
        out[cell] = kept
    return out, sources


def build_slices(
    version: Version | None,
    production: dict[str, list[tuple[str, int, str]]],
    samples_dir: Path | None,
    trained_on: Collection[str] = (),
) -> tuple[list[Slice], list[str]]:
    """The slices to score. Images in `trained_on` (sha256: what the candidate learnt from) are left out of every
    slice: a model scored on its own training images looks better than it is."""
    slices, notes = [], []
    labelled: dict[str, tuple[int, str]] = {}
    left_out: set[str] = set()  # the candidate's training images met among the offered ones

    def untrained(sha: str) -> bool:
        if sha in trained_on:
            left_out.add(sha)
            return False
        return True

    regression = version.dataset("regression") if version is not None else None
    if regression is not None:
        pairs = [
            (i["sha256"], s)
            for i, s in zip((i for i in version.images if i["set"] == "regression"), regression.samples, strict=True)
            if untrained(i["sha256"])
        ]
        if pairs:
            slices.append(Slice("regression", regression, [s for _, s in pairs], [sha for sha, _ in pairs]))
            labelled.update({sha: (s.label, s.defect_type) for sha, s in pairs})
        else:
            after = " after leaving out the candidate's training images" if trained_on else ""
            notes.append(f"version {version.id} has an empty regression set{after}")
    store = Dataset(root=Path(samples_dir or "."), layout="generic", samples=(), fingerprint="")
    conflicting = 0
    for cell, images in production.items():
        images = [image for image in images if untrained(image[0])]
        if not images:
            continue
        samples = [Sample(f"{sha[:2]}/{sha}.jpg", label, t) for sha, label, t in images]
        slices.append(Slice(f"cell:{cell}", store, samples, [sha for sha, _, _ in images]))
    union: dict[str, Sample] = {}
    for s in slices:
        for sha, sample in zip(s.shas, s.samples, strict=True):
            known = labelled.setdefault(sha, (sample.label, sample.defect_type))
            if known != (sample.label, sample.defect_type):
                conflicting += 1
                continue
            union.setdefault(sha, sample)
    if conflicting:
        notes.append(
            f"{conflicting} production image(s) carry a label other than their regression-set/other-cell label: "
            "left out of 'all'"
        )
    if left_out:
        notes.append(f"{len(left_out)} image(s) the candidate was trained on left out of every slice")
    if not slices:
        raise DatasetError(
            "no images to evaluate on: the version's regression set and the production data are empty (or all were "
            "the candidate's training images)"
        )
    shas = sorted(union)
    slices.append(Slice("all", store, [union[sha] for sha in shas], shas))  # scored through the others
    return slices, notes


def model_bands(manifest: Manifest, override: tuple[float, float] | None) -> tuple[float, float, str]:
    if override is not None:
        return override[0], override[1], "--bands"
    if (bands := manifest.applicable_bands) is not None:
        return bands.reinspect, bands.defective, "manifest decision_bands"
    return CELL_DEFAULT_BANDS[0], CELL_DEFAULT_BANDS[1], "cell defaults"


def score_model(
    package: Path, slices: list[Slice], latency_repeats: int = 3
) -> tuple[Manifest, dict[str, float], dict[str, float]]:
    """(manifest, sha256 -> P(defect), latency figures) of a package over every distinct image of the slices.

    Latency: each image is scored alone (batch 1) `latency_repeats` times; its latency is the fastest run (as
    timeit does: the slower runs measure the other processes on the machine, not the model)."""
    scorer, manifest = OnnxScorer.from_package(package)
    spec = manifest.preprocessing
    by_dataset: dict[Path, tuple[Dataset, dict[str, Sample]]] = {}
    seen: set[str] = set()
    for s in slices[:-1]:  # "all" holds nothing the others do not
        entry = by_dataset.setdefault(s.dataset.root, (s.dataset, {}))
        for sha, sample in zip(s.shas, s.samples, strict=True):
            if sha not in seen:  # the same content in two places is scored once
                seen.add(sha)
                entry[1][sha] = sample
    scores: dict[str, float] = {}
    fastest: list[np.ndarray] = []
    for dataset, images in by_dataset.values():
        shas = sorted(images)
        if not shas:
            continue
        samples = [images[sha] for sha in shas]
        runs = []
        for _ in range(max(1, latency_repeats)):
            latencies: list[float] = []
            values = score_samples(scorer, dataset, samples, spec, batch_size=1, progress=False, latencies_ms=latencies)
            runs.append(latencies)
        fastest.append(np.min(np.asarray(runs), axis=0))
        scores.update(zip(shas, (float(v) for v in values), strict=True))
    lat = np.concatenate(fastest)
    latency = {
        "backend": "onnxruntime (CPU, batch 1)",
        "images": len(lat),
        "repeats": max(1, latency_repeats),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
    return manifest, scores, latency


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def slice_figures(s: Slice, scores: dict[str, float], low: float, high: float) -> dict[str, Any]:
    values = np.asarray([scores[sha] for sha in s.shas], dtype=np.float64)
    m = compute_metrics(s.samples, values, low=low, high=high)
    bands = m["bands"]
    per_type = {
        name: {"n": t["n"], "escape_rate": t["normal"] / t["n"], "mean_score": t["mean_score"]}
        for name, t in m["per_type"].items()
        if name != "good"
    }
    return {
        "escape_rate": bands["defect_escape_rate"],
        "false_reject_rate": bands["false_reject_rate"],
        "reinspect_load": bands["fraction_reinspect"],
        "roc_auc": _none_if_nan(m["roc_auc"]),
        "per_type": per_type,
    }


def _worse(figure: str, current: float, candidate: float, tolerance: float) -> bool:
    if figure in RELATIVE:
        return candidate > current * (1.0 + tolerance) + 1e-12 and candidate - current > LATENCY_FLOOR_MS
    if figure in LOWER_IS_WORSE:
        return candidate < current - tolerance - 1e-12
    return candidate > current + tolerance + 1e-12


def slice_evidence(
    s: Slice,
    current: tuple[dict[str, float], float, float],
    candidate: tuple[dict[str, float], float, float],
    significance: float | None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """figure -> is the candidate worse than chance on this slice? Paired per image: McNemar for the rates (each
    model at its own bands), a stratified bootstrap for the AUC. Empty when significance is None."""
    if significance is None:
        return {}
    labels = np.asarray([x.label for x in s.samples]) == 1
    types = np.asarray([x.defect_type for x in s.samples])
    (cur_scores, cur_low, cur_high), (cand_scores, cand_low, cand_high) = current, candidate
    cur = np.asarray([cur_scores[sha] for sha in s.shas], dtype=np.float64)
    cand = np.asarray([cand_scores[sha] for sha in s.shas], dtype=np.float64)
    events = {  # figure -> (the images it is counted on, the event for the current model, for the candidate)
        "escape_rate": (labels, cur < cur_low, cand < cand_low),
        "false_reject_rate": (~labels, cur >= cur_high, cand >= cand_high),
        "reinspect_load": (
            np.ones_like(labels),
            (cur >= cur_low) & (cur < cur_high),
            (cand >= cand_low) & (cand < cand_high),
        ),
    }
    for defect_type in sorted(set(types[labels])):
        events[f"escape_rate[{defect_type}]"] = (labels & (types == defect_type), cur < cur_low, cand < cand_low)
    evidence: dict[str, dict[str, Any]] = {}
    for figure, (on, cur_event, cand_event) in events.items():
        b, c, p = mcnemar_worse_p(cand_event[on], cur_event[on])
        evidence[figure] = {"test": "mcnemar", "only_candidate": b, "only_current": c, "p": p,
                            "significant": p < significance}  # fmt: skip
    if labels.any() and (~labels).any():
        drop, bound = auc_gain_bound(labels, cur, cand, seed, confidence=1.0 - significance)
        evidence["roc_auc"] = {"test": "paired_bootstrap", "drop": drop, "drop_lower_bound": bound,
                               "significant": bound > 0}  # fmt: skip
    return evidence


def gate_checks(
    report: dict[str, Any], gate: dict[str, float | None], evidence: dict[str, dict[str, dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """One check per gated figure and slice; a check fails when the figure is worse beyond its tolerance and,
    where evidence[slice][figure] exists, the paired test says the difference is more than chance."""
    checks = []
    evidence = evidence or {}

    def check(slice_name: str, figure: str, current: float | None, candidate: float | None, gated_as: str) -> None:
        tolerance = gate[gated_as]
        if tolerance is None or current is None or candidate is None:
            return
        worse = _worse(gated_as, current, candidate, tolerance)
        test = evidence.get(slice_name, {}).get(figure)
        item = {
            "slice": slice_name,
            "figure": figure,
            "current": current,
            "candidate": candidate,
            "tolerance": tolerance,
            "comparison": "relative" if gated_as in RELATIVE else "absolute",
            "passed": not (worse and (test is None or test["significant"])),
        }
        if test is not None:
            item["evidence"] = test
        checks.append(item)

    for name, s in report["slices"].items():
        cur, cand = s["current"], s["candidate"]
        for figure in ("escape_rate", "false_reject_rate", "reinspect_load", "roc_auc"):
            check(name, figure, cur[figure], cand[figure], figure)
        for defect_type in sorted(set(cur["per_type"]) & set(cand["per_type"])):
            check(
                name,
                f"escape_rate[{defect_type}]",
                cur["per_type"][defect_type]["escape_rate"],
                cand["per_type"][defect_type]["escape_rate"],
                "per_type_escape_rate",
            )
    check("all", "latency_p99_ms", report["latency"]["current"]["p99_ms"], report["latency"]["candidate"]["p99_ms"],
          "latency_p99_ms")  # fmt: skip
    return checks


def evaluate_candidate(
    candidate: Path,
    current: Path,
    *,
    version: Version | None,
    production: dict[str, list[tuple[str, int, str]]],
    samples_dir: Path | None,
    gate: dict[str, float | None],
    bands: tuple[float, float] | None = None,
    since: datetime | None = None,
    cells_running: dict[str, str | None] | None = None,
    left_out: dict[str, int] | None = None,
    latency_repeats: int = 3,
    trained_on: Collection[str] = (),
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """Score both packages on the same slices and apply the gate; the report as a dict. `trained_on`: the sha256 of
    the candidate's training images (left out of every slice); `notes`: the caller's, reported first."""
    slices, slice_notes = build_slices(version, production, samples_dir, trained_on)
    notes = [*notes, *slice_notes]
    models: dict[str, Any] = {}
    for role, package in (("current", current), ("candidate", candidate)):
        manifest, scores, latency = score_model(package, slices, latency_repeats)
        low, high, basis = model_bands(manifest, bands)
        models[role] = {"manifest": manifest, "scores": scores, "latency": latency, "bands": (low, high, basis)}
    report: dict[str, Any] = {
        "format": "qc-candidate-report/1",
        "models": {
            role: {
                "package": str(package),
                "version": models[role]["manifest"].version,
                "sha256": models[role]["manifest"].sha256,
                "architecture": models[role]["manifest"].architecture,
                "bands": dict(zip(("low", "high", "basis"), models[role]["bands"], strict=True)),
            }
            for role, package in (("current", current), ("candidate", candidate))
        },
        "data_set_version": version.id if version is not None else None,
        "production_since": since.isoformat() + "Z" if since else None,
        "slices": {},
        "latency": {role: models[role]["latency"] for role in ("current", "candidate")},
        "left_out": left_out or {},
        "notes": notes,
    }
    significance = gate.get(SIGNIFICANCE)
    evidence = {}
    for s in slices:
        evidence[s.name] = slice_evidence(
            s,
            (models["current"]["scores"], *models["current"]["bands"][:2]),
            (models["candidate"]["scores"], *models["candidate"]["bands"][:2]),
            significance,
        )
        row: dict[str, Any] = {
            "n_images": len(s.samples),
            "n_good": sum(x.label == 0 for x in s.samples),
            "n_defective": sum(x.label == 1 for x in s.samples),
        }
        for role in ("current", "candidate"):
            low, high, _ = models[role]["bands"]
            row[role] = slice_figures(s, models[role]["scores"], low, high)
        report["slices"][s.name] = row
    if cells_running:
        current_version = models["current"]["manifest"].version
        report["cells_running"] = cells_running
        others = sorted(c for c, v in cells_running.items() if v and v != current_version)
        if others:
            notes.append(
                f"cell(s) {', '.join(others)} report a model other than the current package ({current_version})"
            )
    checks = gate_checks(report, gate, evidence)
    blocked = [c for c in checks if not c["passed"]]
    report["gate"] = {
        "tolerances": gate,
        "checks": checks,
        "blocked_by": blocked,
        "promotable": not blocked,
    }
    return report


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _evidence(check: dict[str, Any]) -> str:
    e = check.get("evidence")
    if e is None:
        return ""
    if e["test"] == "mcnemar":
        return f"only candidate wrong {e['only_candidate']}, only current {e['only_current']}: p {e['p']:.3f}"
    return f"AUC drop {e['drop']:.3f}, lower bound {e['drop_lower_bound']:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    cur, cand = report["models"]["current"], report["models"]["candidate"]
    gate = report["gate"]
    lines = [
        f"# Candidate {cand['version']} against current {cur['version']}",
        "",
        f"**{'PROMOTABLE' if gate['promotable'] else 'BLOCKED'}**"
        + (
            ""
            if gate["promotable"]
            else " by: "
            + "; ".join(
                f"{c['figure']} on {c['slice']}: candidate {_f(c['candidate'], 4)} vs current {_f(c['current'], 4)} "
                f"(tolerance {c['tolerance']:g} {c['comparison']})"
                for c in gate["blocked_by"]
            )
        ),
        "",
        "| | current | candidate |",
        "|---|---|---|",
        f"| package | `{cur['package']}` | `{cand['package']}` |",
        f"| version | {cur['version']} | {cand['version']} |",
        f"| bands (low/high) | {cur['bands']['low']:g}/{cur['bands']['high']:g} ({cur['bands']['basis']}) | "
        f"{cand['bands']['low']:g}/{cand['bands']['high']:g} ({cand['bands']['basis']}) |",
    ]
    lat = report["latency"]
    lines.append(
        f"| latency p50 / p99 ms ({lat['current']['backend']}) | {_f(lat['current']['p50_ms'], 2)} / "
        f"{_f(lat['current']['p99_ms'], 2)} | {_f(lat['candidate']['p50_ms'], 2)} / "
        f"{_f(lat['candidate']['p99_ms'], 2)} |"
    )
    lines += ["", f"Data set version: {report['data_set_version'] or 'none'}; production since: "
              f"{report['production_since'] or 'all labelled samples'}.", ""]  # fmt: skip
    for name, s in report["slices"].items():
        lines += [
            f"## {name} ({s['n_images']} images: {s['n_good']} good, {s['n_defective']} defective)",
            "",
            "| figure | current | candidate |",
            "|---|---|---|",
        ]
        for figure in ("escape_rate", "false_reject_rate", "reinspect_load", "roc_auc"):
            lines.append(f"| {figure.replace('_', ' ')} | {_f(s['current'][figure])} | {_f(s['candidate'][figure])} |")
        for t in sorted(set(s["current"]["per_type"]) | set(s["candidate"]["per_type"])):
            c, k = s["current"]["per_type"].get(t), s["candidate"]["per_type"].get(t)
            lines.append(
                f"| escape rate [{t}] (n={(c or k)['n']}) | {_f(c and c['escape_rate'])} | "
                f"{_f(k and k['escape_rate'])} |"
            )
        lines.append("")
    lines += [
        "## Gate",
        "",
        f"Significance: {gate['tolerances'].get(SIGNIFICANCE) or 'none (point estimates)'}: a worse figure blocks "
        "only when the paired test says it is more than chance.",
        "",
        "| slice | figure | current | candidate | tolerance | paired evidence | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in gate["checks"]:
        lines.append(
            f"| {c['slice']} | {c['figure']} | {_f(c['current'], 4)} | {_f(c['candidate'], 4)} | "
            f"{c['tolerance']:g} ({c['comparison']}) | {_evidence(c)} | {'pass' if c['passed'] else '**BLOCKS**'} |"
        )
    not_gated = [k for k, v in gate["tolerances"].items() if v is None and k != SIGNIFICANCE]
    if not_gated:
        lines += ["", f"Not gated: {', '.join(not_gated)}."]
    if report["notes"] or report["left_out"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
        lines += [f"- left out: {n} ({reason})" for reason, n in report["left_out"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    paths["markdown"].write_text(render_markdown(report))
    return paths
