"""`qc_cloud dataset export`: the labelled samples as a training data set in the generic layout `qc_cloud train`
reads (good/, one folder per defect type), with manifest.json saying where each image came from.
`unsure` answers are left out. Writes into a new folder (never over an existing data set)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine

from qc_cloud.dashboard import data
from qc_cloud.fleet.samples import SampleStore


class ExportError(RuntimeError):
    pass


def export(engine: Engine, samples: SampleStore, out: Path, who: str = "") -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: export into a new folder")
    with engine.connect() as conn:
        rows = data.labelled_samples(conn)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    items, missing, skipped = [], [], 0
    for row in rows:
        if row["answer"] == "unsure":
            skipped += 1
            continue
        folder = "good" if row["answer"] == "good" else row["defect_type"] or "defect"
        image = samples.get(row["sha256"])
        if image is None:
            missing.append(row["sha256"])
            continue
        name = f"{row['cell'].replace('/', '_')}__{row['sample_record_id']}.jpg"
        (tmp / folder).mkdir(exist_ok=True)
        (tmp / folder / name).write_bytes(image)
        items.append({"path": f"{folder}/{name}", **row})
    counts: dict[str, int] = {}
    for item in items:
        counts[item["path"].split("/")[0]] = counts.get(item["path"].split("/")[0], 0) + 1
    manifest = {
        "format": "qc-dashboard-labels/1",
        "layout": "generic",
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exported_by": who,
        "images": len(items),
        "counts": counts,
        "unsure_left_out": skipped,
        "missing_images": missing,
        "items": items,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return {k: v for k, v in manifest.items() if k != "items"} | {"folder": str(out)}
