"""`qc_cloud models`: model lifecycle commands. `models evaluate-candidate` scores a candidate package against the
package the cells run now and applies the promotion gate (docs/learning-loop.md, "Promotion gate").
(`qc_cloud publish-model` signs and publishes a package.)

Exit status of evaluate-candidate: 0 promotable, 3 blocked by the gate, 2 bad input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qc_cloud.training.dataset_versions import Version


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="model lifecycle: evaluate a candidate against the current model")
    sub = p.add_subparsers(dest="models_command", required=True)
    e = sub.add_parser(
        "evaluate-candidate",
        help="score a candidate and the current package on the same images and apply the promotion gate",
        description="Score --candidate and --current (model packages) on the regression set of --version and on "
        "recent labelled production data per cell (the fleet service's station labels, with --from-fleet), each "
        "model at its decision bands. Writes report.json and report.md into --out. Exit status: 0 promotable, "
        "3 blocked by the gate (the report names the figure(s)), 2 bad input.",
    )
    e.add_argument("--candidate", type=Path, required=True, help="candidate model package folder")
    e.add_argument("--current", type=Path, required=True, help="the package the cells run now")
    e.add_argument("--version", help="data set version (folder, or id in --store) whose regression set is scored")
    e.add_argument("--store", type=Path, help="version store folder (to find --version by id)")
    e.add_argument("--from-fleet", action="store_true", help="add recent labelled production data, per cell")
    e.add_argument("--since", default="7d", help="production samples taken from (ISO 8601 UTC, or 7d/24h/30m ago)")
    e.add_argument("--cells", nargs="+", help="only these cells (site/line/cell)")
    e.add_argument("--config", default=None, help="fleet settings file (QC_FLEET_SETTINGS_FILE)")
    e.add_argument("--data-dir", help="the fleet service's data folder")
    e.add_argument("--database-url-file", help="file holding the fleet database URL")
    e.add_argument("--gate", type=Path, help="gate config (YAML/JSON): figure: tolerance (null = not gated)")
    e.add_argument("--bands", help="LOW,HIGH: decision bands for both models (default: each manifest's, else 0.5,0.8)")
    e.add_argument(
        "--latency-repeats", type=int, default=3, help="score each image this often; its latency is the fastest run"
    )
    e.add_argument("--out", type=Path, required=True, help="folder for report.json and report.md")
    e.set_defaults(func=evaluate_candidate_main)


def _bands(text: str | None) -> tuple[float, float] | None:
    from qc_cloud.training.errors import ConfigError

    if not text:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--bands {text!r}: LOW,HIGH, e.g. 0.5,0.8") from None
    if not 0 < low <= high < 1:
        raise ConfigError(f"--bands needs 0 < LOW <= HIGH < 1 (got {low}, {high})")
    return low, high


def _candidate_training_images(
    candidate: Path, version: Version | None, store: Path | None
) -> tuple[set[str], list[str]]:
    """(sha256 of the images the candidate was trained on, notes): from the data set version its manifest names
    (dataset.version, written by `qc_cloud train` on a version), found as --version or in --store."""
    from qc_cloud.training import dataset_versions as dv
    from qc_contract.model_manifest import Manifest, ManifestError

    try:
        trained = Manifest.load(candidate).dataset.get("version")
    except (ManifestError, OSError):
        return set(), []  # scoring the package reports what is wrong with it
    if not trained:
        return set(), ["the candidate was not trained on a data set version: overlap with the slices not checked"]
    if version is not None and version.id == trained:
        source = version
    else:
        try:
            source = dv.read_version(dv.resolve_version(trained, store))
        except dv.VersionError as exc:
            return set(), [f"the candidate's training version {trained} was not found ({exc}): overlap not checked"]
    return source.shas("data"), [f"candidate trained on data set version {trained}"]


def _evaluate(args: argparse.Namespace) -> int:
    from qc_cloud.commands.dataset import fleet_rows, parse_since
    from qc_cloud.training import candidate as core
    from qc_cloud.training import dataset_versions as dv
    from qc_cloud.training.errors import ConfigError

    gate = core.load_gate(args.gate)
    bands = _bands(args.bands)
    version = dv.read_version(dv.resolve_version(args.version, args.store)) if args.version else None
    if version is None and not args.from_fleet:
        raise ConfigError("nothing to evaluate on: give --version (its regression set) and/or --from-fleet")
    production, samples_dir, cells_running, left_out, since = {}, None, None, {}, None
    if args.from_fleet:
        from qc_cloud.fleet import settings as settings_module

        try:
            since = parse_since(args.since)
            rows, samples_dir, cells_running = fleet_rows(args)
        except (settings_module.SettingsError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        production, sources = core.production_slices(rows, samples_dir, since, args.cells)
        left_out = dict(sources.left_out)
        for bad in sources.bad:
            left_out[f"unusable image: {bad['reason']}"] = left_out.get(f"unusable image: {bad['reason']}", 0) + 1
    trained_on, notes = _candidate_training_images(args.candidate, version, args.store)
    report = core.evaluate_candidate(
        args.candidate,
        args.current,
        version=version,
        production=production,
        samples_dir=samples_dir,
        gate=gate,
        bands=bands,
        since=since,
        cells_running=cells_running,
        left_out=left_out,
        latency_repeats=args.latency_repeats,
        trained_on=trained_on,
        notes=notes,
    )
    paths = core.write_report(report, args.out)
    gate_result = report["gate"]
    for name, s in report["slices"].items():
        cur, cand = s["current"], s["candidate"]
        print(
            f"{name:<28} {s['n_images']:>5} img  escape {core._f(cur['escape_rate'])} -> {core._f(cand['escape_rate'])}"
            f"  false reject {core._f(cur['false_reject_rate'])} -> {core._f(cand['false_reject_rate'])}"
            f"  re-inspect {core._f(cur['reinspect_load'])} -> {core._f(cand['reinspect_load'])}"
            f"  AUC {core._f(cur['roc_auc'])} -> {core._f(cand['roc_auc'])}"
        )
    if gate_result["promotable"]:
        print(f"PROMOTABLE: no gated figure is worse beyond its tolerance ({len(gate_result['checks'])} checks)")
    else:
        for c in gate_result["blocked_by"]:
            print(
                f"BLOCKED by {c['figure']} on {c['slice']}: candidate {c['candidate']:.4f}, current "
                f"{c['current']:.4f} (tolerance {c['tolerance']:g} {c['comparison']})"
            )
    print(f"report: {paths['markdown']}")
    return core.EXIT_PROMOTABLE if gate_result["promotable"] else core.EXIT_BLOCKED


def evaluate_candidate_main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    return run_guarded("models evaluate-candidate", _evaluate, args)
