"""The run report of a cell (demo and system tests): report.json, PNG plots and a summary table."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from qc_cell.bringup.local_broker import Received
from qc_cell.bringup.recorder import CellRecord
from qc_contract.vocabulary import VERDICT_NAMES, Verdict

LABELS = {0: "unknown", 1: "good", 2: "defect"}
EJECTED = (Verdict.DEFECTIVE, Verdict.NOT_INSPECTED)  # ejected by the demo's reject configuration


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


def _json(message: Received) -> dict:
    try:
        data = message.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def part_ids(mqtt: list[Received]) -> set[str]:
    """Distinct part ids of the per-part summaries that reached the broker."""
    return {str(_json(m).get("part_id")) for m in mqtt if m.topic.endswith("/part") and "part_id" in _json(m)}


def parts_sent_twice(mqtt: list[Received]) -> int:
    """Parts with more than one distinct summary record (a QoS 1 redelivery repeats the record id: not counted)."""
    ids: dict[str, set[str]] = {}
    for message in mqtt:
        data = _json(message) if message.topic.endswith("/part") else {}
        if "part_id" in data:
            ids.setdefault(str(data["part_id"]), set()).add(str(data.get("id")))
    return sum(len(record_ids) > 1 for record_ids in ids.values())


def rejects_complete(record: CellRecord) -> bool:
    """Every part whose verdict is ejected has its reject event."""
    due = {d.part_id for d in record.decisions.values() if d.verdict in EJECTED}
    return due <= set(record.reject_events)


def build(record: CellRecord, mqtt: list[Received], image_bytes_per_part: int, wall_s: float) -> dict[str, Any]:
    decisions = list(record.decisions.values())
    registered = set(record.parts) | set(record.decisions)
    verdicts = Counter(VERDICT_NAMES[d.verdict] for d in decisions)
    confusion: dict[str, Counter] = {label: Counter() for label in LABELS.values()}
    for d in decisions:
        confusion[LABELS.get(d.ground_truth, "unknown")][VERDICT_NAMES[d.verdict]] += 1
    labelled = [d for d in decisions if d.ground_truth in (1, 2)]
    # Visual accuracy at the model's 0.5 boundary: Normal = predicted good; anything else = flagged.
    correct = sum((d.verdict != Verdict.NORMAL) == (d.ground_truth == 2) for d in labelled)
    scored = [d for d in labelled if math.isfinite(d.defect_probability)]
    model_correct = sum((d.defect_probability >= 0.5) == (d.ground_truth == 2) for d in scored)
    times = sorted(d.received_monotonic for d in decisions)
    mqtt_parts = part_ids(mqtt)
    mqtt_bytes = sum(len(m.payload) + len(m.topic) for m in mqtt)
    due = {d.part_id for d in decisions if d.verdict in EJECTED}
    return {
        "parts_registered": len(registered),
        "parts_with_verdict": len(decisions),
        "parts_without_verdict": len(registered - set(record.decisions)),
        "duplicate_verdicts": len(record.duplicate_decisions),
        "verdicts": {name: verdicts.get(name, 0) for name in VERDICT_NAMES.values()},
        "confusion": {label: dict(counts) for label, counts in confusion.items() if counts},
        "accuracy_vs_ground_truth": round(correct / len(labelled), 4) if labelled else None,
        "model_accuracy_at_0_5": round(model_correct / len(scored), 4) if scored else None,
        "latency_capture_to_verdict_ms": _percentiles([d.latency_ms for d in decisions]),
        "parts_per_s": round((len(times) - 1) / (times[-1] - times[0]), 2) if len(times) > 1 else None,
        "wall_time_s": round(wall_s, 1),
        "reject": {
            "parts_due": len(due),
            "parts_with_reject_event": len(due & set(record.reject_events)),
            "outcomes": dict(Counter(str(o) for events in record.reject_events.values() for o in events)),
        },
        "mqtt": {
            "messages": len(mqtt),
            "part_records": len(mqtt_parts),
            "part_records_vs_parts": f"{len(mqtt_parts & set(record.decisions))}/{len(decisions)}",
            "parts_without_record": sorted(set(record.decisions) - mqtt_parts)[:20],  # the first 20, for a look
            "parts_sent_twice": parts_sent_twice(mqtt),
            "bytes_total": mqtt_bytes,
            "bytes_per_part": round(mqtt_bytes / len(decisions), 1) if decisions else None,
            "fraction_of_raw_image_bytes": (
                round(mqtt_bytes / len(decisions) / image_bytes_per_part, 6)
                if decisions and image_bytes_per_part
                else None
            ),
        },
    }


def plot(record: CellRecord, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decisions = sorted(record.decisions.values(), key=lambda d: d.received_monotonic)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([d.latency_ms for d in decisions], bins=40, color="tab:blue")
    ax.set(title="Capture-to-verdict latency", xlabel="ms", ylabel="parts")
    paths.append(out_dir / "latency_histogram.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, color in ((1, "tab:green"), (2, "tab:red")):
        scores = [
            d.defect_probability for d in decisions if d.ground_truth == label and math.isfinite(d.defect_probability)
        ]
        if scores:
            ax.hist(scores, bins=np.linspace(0, 1, 41), alpha=0.6, color=color, label=LABELS[label])
    for threshold in (0.5, 0.8):
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
    ax.set(title="Defect probability by ground truth", xlabel="P(defective)", ylabel="parts")
    ax.legend()
    paths.append(out_dir / "score_distribution.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    if decisions:
        t0 = decisions[0].received_monotonic
        for verdict, name in VERDICT_NAMES.items():
            t = [d.received_monotonic - t0 for d in decisions if d.verdict == verdict]
            ax.plot(t, np.arange(1, len(t) + 1), label=name.lower())
    ax.set(title="Verdicts over time (cumulative)", xlabel="s", ylabel="parts")
    ax.legend()
    paths.append(out_dir / "verdicts_over_time.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def write(report: dict[str, Any], record: CellRecord, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    report = {**report, "plots": [p.name for p in plot(record, out_dir)]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def table(report: dict[str, Any]) -> str:
    lat = report["latency_capture_to_verdict_ms"]
    mqtt = report["mqtt"]
    rows = [
        ("parts registered / with verdict", f"{report['parts_registered']} / {report['parts_with_verdict']}"),
        ("parts without verdict", report["parts_without_verdict"]),
        ("duplicate verdicts", report["duplicate_verdicts"]),
        *((f"  {name.lower()}", count) for name, count in report["verdicts"].items()),
        ("accuracy vs ground truth", report["accuracy_vs_ground_truth"]),
        ("latency p50 / p95 / p99 ms", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ("parts/s", report["parts_per_s"]),
        (
            "reject events / parts due",
            f"{report['reject']['parts_with_reject_event']} / {report['reject']['parts_due']}",
        ),
        ("MQTT part records vs parts", mqtt["part_records_vs_parts"]),
        ("bytes to cloud per part", mqtt["bytes_per_part"]),
        ("  fraction of raw image", mqtt["fraction_of_raw_image_bytes"]),
    ]
    fleet = report.get("fleet")
    if fleet:
        rows += [
            ("fleet service parts stored vs parts", fleet["parts_stored_vs_parts"]),
            ("fleet service", fleet["url"]),
        ]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
