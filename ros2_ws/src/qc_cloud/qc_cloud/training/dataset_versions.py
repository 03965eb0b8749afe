"""Data set versions: immutable, content-addressed, fingerprinted sets of labelled images with their provenance.

A version is built from any mix of sources (`qc_cloud dataset build`):
- operator-labelled production samples from the fleet service (the re-inspection station's current labels);
- earlier versions (their training images and their regression set);
- folders (MVTec AD or generic layout, as `qc_cloud dataset check` reads them).

Layout of a version folder (named after its id)::

    version.json                         id, fingerprint, every image with its label, set and provenance
    data/good/<sha256>.<ext>             training images (generic layout: `qc_cloud train --data <version>`)
    data/defect/<type>/<sha256>.<ext>
    regression/good/...                  the regression set (held out from data/; `qc_cloud evaluate --data
    regression/defect/<type>/...         <version>/regression`, `qc_cloud models evaluate-candidate`)

Rules:
- Images are deduplicated by content (sha256 of the file's bytes). One content with two different labels
  (good vs defective, or two defect types) is a conflict: reported in version.json and left out, never picked.
  The one exception is an image already in a parent's regression set: the regression set is fixed, so it keeps
  its label there and the conflict is still reported.
- The id is a fingerprint of the content (every image's sha256, label, defect type and set), so the same
  inputs give the same id. A version folder is never modified: building into an existing id checks it and
  does nothing; reading a version re-hashes every file and the whole version.json (tampering is detected).
- The regression set only grows: a version's regression set holds its parents' regression sets, plus the
  hard cases people confirmed (a station label that disagrees with the cell's verdict, or a part the cell sent
  to re-inspection) picked by a fixed hash of the image (`regression_fraction` of them; the rest train), plus
  folders given as regression additions. An image a parent trained on stays in data/ (a model trained on the
  parent has seen it; it would flatter that model on the regression set).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qc_cloud.training.datasets import GOOD, IMAGE_SUFFIXES, Dataset, Sample, decode_image, discover
from qc_cloud.training.errors import DatasetError

FORMAT = "qc-dataset-version/1"
VERSION_FILE = "version.json"
SETS = ("data", "regression")
DEFAULT_REGRESSION_FRACTION = 0.5
HARD_VERDICTS = {"REINSPECT"}  # the cell was unsure: whatever the answer, a person decided
DISAGREES = {("NORMAL", "defective"), ("DEFECTIVE", "good")}


class VersionError(DatasetError):
    """The version cannot be built or read; the message says why."""


@dataclass
class Offer:
    """One image as a source offers it."""

    sha256: str
    label: int
    defect_type: str
    path: Path  # where its bytes are now
    provenance: dict[str, Any]
    hard: bool = False  # confirmed by a person against (or instead of) the cell's verdict
    regression: bool = False  # asked for the regression set (--regression-add)
    inherited: str | None = None  # "data" / "regression": from a parent version's set

    @property
    def key(self) -> tuple[int, str]:
        return self.label, self.defect_type


@dataclass
class Sources:
    """What the sources offered: images, and what could not be used (each with its reason)."""

    offers: list[Offer] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)  # unreadable / corrupt / missing images
    left_out: dict[str, int] = field(default_factory=dict)  # counted, not errors (e.g. "unsure" answers)
    parents: list[str] = field(default_factory=list)
    described: list[dict[str, Any]] = field(default_factory=list)  # one line per source, for version.json

    def count(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


@dataclass(frozen=True)
class Version:
    root: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.meta["images"]

    def shas(self, which: str) -> set[str]:
        return {i["sha256"] for i in self.images if i["set"] == which}

    def dataset(self, which: str) -> Dataset:
        """The images of one set ("data" or "regression") as a Dataset rooted at the version folder (already
        verified: no second decode)."""
        samples = tuple(Sample(i["file"], i["label"], i["defect_type"]) for i in self.images if i["set"] == which)
        return Dataset(root=self.root, layout="generic", samples=samples, fingerprint=self.meta["fingerprint"])


# -- reading -------------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_fingerprint(images: Iterable[dict[str, Any]]) -> str:
    """sha256 over (sha256, label, defect type, set) of every image, in sha256 order: the version's content."""
    rows = sorted([i["sha256"], int(i["label"]), i["defect_type"], i["set"]] for i in images)
    return _sha256_bytes(_canonical(rows))


def version_id(fingerprint: str) -> str:
    return f"ds-{fingerprint[:16]}"


def _digest(meta: dict[str, Any]) -> str:
    return _sha256_bytes(_canonical({k: v for k, v in meta.items() if k != "digest"}))


def read_version(path: Path | str) -> Version:
    """Read and verify a version: version.json intact (digest), id = fingerprint of the listed content, every
    listed file present with its sha256, no other image file. VersionError says what is wrong."""
    root = Path(path).expanduser().resolve()
    meta_path = root / VERSION_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise VersionError(f"{root} is not a data set version (no {VERSION_FILE})") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionError(f"unreadable {meta_path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VersionError(f"{meta_path}: not a {FORMAT} document")
    problems = []
    if meta.get("digest") != _digest(meta):
        problems.append("version.json was changed after it was written (digest mismatch)")
    images = meta.get("images") or []
    fingerprint = content_fingerprint(images)
    if fingerprint != meta.get("fingerprint") or meta.get("id") != version_id(fingerprint):
        problems.append("its id/fingerprint does not match the images it lists")
    listed = set()
    for image in images:
        file = root / image["file"]
        listed.add(file)
        try:
            actual = _sha256_bytes(file.read_bytes())
        except OSError:
            problems.append(f"{image['file']} is missing")
            continue
        if actual != image["sha256"]:
            problems.append(f"{image['file']} was changed (sha256 {actual[:12]}..., listed {image['sha256'][:12]}...)")
    for which in SETS:
        for extra in sorted(p for p in (root / which).rglob("*") if p.is_file() and p not in listed):
            problems.append(f"{extra.relative_to(root)} is not listed in version.json")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise VersionError(f"data set version {root.name} is damaged or was modified: {shown}")
    return Version(root, meta)


def resolve_version(ref: str | Path, store: Path | None = None) -> Path:
    """A version folder from a path, or an id (or a unique id prefix) inside the version store."""
    path = Path(ref).expanduser()
    if (path / VERSION_FILE).is_file():
        return path
    if store is not None and Path(store).is_dir():
        exact = Path(store) / str(ref)
        if (exact / VERSION_FILE).is_file():
            return exact
        matches = [p for p in Path(store).iterdir() if p.name.startswith(str(ref)) and (p / VERSION_FILE).is_file()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise VersionError(f"version {ref!r} is ambiguous in {store}: {', '.join(sorted(m.name for m in matches))}")
    raise VersionError(f"no data set version {ref!r} (neither a version folder nor an id in {store or 'the store'})")


# -- sources -------------------------------------------------------------------------------------------


def _checked(path: Path, source: str, sources: Sources, expected_sha: str | None = None) -> str | None:
    """sha256 of a decodable image file; None (and the reason in sources.bad) if it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        sources.bad.append({"source": source, "path": str(path), "reason": f"cannot read: {exc.strerror or exc}"})
        return None
    sha = _sha256_bytes(data)
    if expected_sha is not None and sha != expected_sha:
        sources.bad.append(
            {"source": source, "path": str(path), "reason": f"content sha256 {sha[:12]}... is not the recorded one"}
        )
        return None
    try:
        decode_image(data, path)
    except DatasetError as exc:
        sources.bad.append({"source": source, "path": str(path), "reason": str(exc)})
        return None
    return sha


def add_folder(sources: Sources, folder: Path | str, *, regression: bool = False) -> None:
    """Every image of a data set folder (MVTec AD or generic layout); a version folder counts as a version."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise VersionError(f"folder {root} does not exist")
    if (root / VERSION_FILE).is_file():
        if regression:
            raise VersionError(f"{root} is a data set version: give it as --from-version, not as a regression folder")
        add_version(sources, root)
        return
    layout, found = discover(root)
    if not found:
        raise VersionError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    kind = "regression_folder" if regression else "folder"
    sources.described.append({"kind": kind, "folder": str(root), "layout": layout, "images": len(found)})
    for path, label, defect_type in found:
        sha = _checked(path, str(root), sources)
        if sha is not None:
            provenance = {"kind": kind, "folder": str(root), "path": path.relative_to(root).as_posix()}
            sources.offers.append(Offer(sha, label, defect_type, path, provenance, regression=regression))


def add_version(sources: Sources, path: Path | str) -> Version:
    """Every image of an earlier version, in the set it had there, with its provenance (marked `via`)."""
    parent = read_version(path)
    sources.parents.append(parent.id)
    sources.described.append({"kind": "version", "version": parent.id, "images": len(parent.images)})
    for image in parent.images:
        provenance = [{**p, "via": p.get("via", parent.id)} for p in image["provenance"]]
        offer = Offer(
            image["sha256"],
            image["label"],
            image["defect_type"],
            parent.root / image["file"],
            {"kind": "version", "version": parent.id, "inherited": provenance},
            hard=image.get("hard_case", False),
            inherited=image["set"],
        )
        sources.offers.append(offer)
    return parent


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def is_hard_case(verdict: str | None, answer: str) -> bool:
    """A person decided what the cell could not (re-inspection) or said the cell was wrong."""
    return verdict in HARD_VERDICTS or (verdict, answer) in DISAGREES


def add_fleet_labels(
    sources: Sources,
    rows: Iterable[dict[str, Any]],
    samples_dir: Path,
    *,
    since: datetime | None = None,
    cells: Iterable[str] | None = None,
    describe: str = "fleet",
    time_field: str = "labelled_at",
) -> None:
    """The re-inspection station's current labels (rows of qc_cloud.dashboard.data.labelled_samples) with their
    images from the fleet service's sample store (<samples_dir>/<sha[:2]>/<sha>.jpg). `unsure` answers are left
    out (counted). `since` (naive UTC) bounds `time_field`: the label's time (labelled_at), or the sample's
    (sample_time)."""
    wanted = set(cells) if cells else None
    used = 0
    for row in rows:
        if wanted is not None and row["cell"] not in wanted:
            continue
        if since is not None and (_time(row.get(time_field)) or datetime.min) < since:
            continue
        if row["answer"] not in ("good", "defective"):
            sources.count(f"label answer {row['answer']!r}")
            continue
        path = Path(samples_dir) / row["sha256"][:2] / f"{row['sha256']}.jpg"
        sha = _checked(path, f"fleet {row['cell']} part {row['part_id']}", sources, expected_sha=row["sha256"])
        if sha is None:
            continue
        label = 0 if row["answer"] == "good" else 1
        defect_type = GOOD if label == 0 else (row.get("defect_type") or "defect")
        provenance = {
            "kind": "fleet",
            "cell": row["cell"],
            "part_id": row["part_id"],
            "sample_record_id": row["sample_record_id"],
            "sample_kind": row.get("kind"),
            "label_id": row["label_id"],
            "labelled_by": row["labelled_by"],
            "labelled_at": row["labelled_at"],
            "cell_verdict": row.get("verdict"),
            "defect_probability": row.get("defect_probability"),
            "model_version": row.get("model_version"),
        }
        hard = is_hard_case(row.get("verdict"), row["answer"])
        sources.offers.append(Offer(sha, label, defect_type, path, provenance, hard=hard))
        used += 1
    sources.described.append(
        {"kind": "fleet", "from": describe, "since": since.isoformat() + "Z" if since else None, "labels": used}
    )


# -- building ------------------------------------------------------------------------------------------


def _in_regression_share(sha: str, fraction: float) -> bool:
    return int(sha[:8], 16) / 2**32 < fraction


def _ext(offers: list[Offer]) -> str:
    exts = sorted({o.path.suffix.lower() for o in offers if o.path.suffix.lower() in IMAGE_SUFFIXES})
    return ".jpg" if exts == [".jpeg"] else (exts[0] if exts else ".img")


def plan(sources: Sources, regression_fraction: float = DEFAULT_REGRESSION_FRACTION) -> dict[str, Any]:
    """Dedup, conflicts and set assignment: the version's images (without writing anything)."""
    if not 0.0 <= regression_fraction <= 1.0:
        raise VersionError(f"regression fraction must be within [0, 1], got {regression_fraction}")
    groups: dict[str, list[Offer]] = {}
    for offer in sources.offers:
        groups.setdefault(offer.sha256, []).append(offer)
    images, conflicts, notes = [], [], []
    for sha in sorted(groups):
        offers = groups[sha]
        labels = {o.key for o in offers}
        fixed = {o.key for o in offers if o.inherited == "regression"}
        if len(fixed) > 1:
            raise VersionError(
                f"image {sha[:12]}... is in the regression sets of parent versions with different labels "
                f"({sorted(fixed)}): the regression set is fixed, build from one of them"
            )
        if len(labels) > 1:
            conflicts.append(
                {
                    "sha256": sha,
                    "labels": [
                        {"label": o.label, "defect_type": o.defect_type, "provenance": o.provenance} for o in offers
                    ],
                    "resolution": "kept in the regression set with its fixed label" if fixed else "left out",
                }
            )
            if not fixed:
                continue
            offers = [o for o in offers if o.key in fixed]
        label, defect_type = offers[0].key
        inherited = {o.inherited for o in offers if o.inherited}
        hard = any(o.hard for o in offers)
        if "regression" in inherited:
            which = "regression"
        elif "data" in inherited:
            which = "data"
            if any(o.regression for o in offers):
                notes.append(f"{sha[:12]}... was asked for the regression set but a parent trains on it: kept in data")
        elif any(o.regression for o in offers) or (hard and _in_regression_share(sha, regression_fraction)):
            which = "regression"
        else:
            which = "data"
        folder = GOOD if label == 0 else f"defect/{defect_type}"
        provenance: list[dict[str, Any]] = []
        for o in offers:
            provenance += o.provenance["inherited"] if o.provenance.get("kind") == "version" else [o.provenance]
        unique = {json.dumps(p, sort_keys=True): p for p in provenance}
        images.append(
            {
                "sha256": sha,
                "file": f"{which}/{folder}/{sha}{_ext(offers)}",
                "label": label,
                "defect_type": defect_type,
                "set": which,
                "hard_case": hard,
                "provenance": [unique[k] for k in sorted(unique)],
                "_from": offers[0].path,
            }
        )
    return {"images": images, "conflicts": conflicts, "notes": notes}


def _counts(images: list[dict[str, Any]], which: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for image in images:
        if image["set"] == which:
            out[image["defect_type"]] = out.get(image["defect_type"], 0) + 1
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class BuildResult:
    version: Version
    created: bool  # False: the version existed already (a no-op)

    def summary(self) -> dict[str, Any]:
        meta = self.version.meta
        return {
            "id": meta["id"],
            "path": str(self.version.root),
            "created": self.created,
            "fingerprint": meta["fingerprint"],
            "parents": meta["parents"],
            "images": len(meta["images"]),
            "counts": meta["counts"],
            "hard_cases": sum(i["hard_case"] for i in meta["images"]),
            "conflicts": len(meta["conflicts"]),
            "bad_images": len(meta["bad_images"]),
            "left_out": meta["left_out"],
        }


def build(
    sources: Sources,
    store: Path | str,
    *,
    regression_fraction: float = DEFAULT_REGRESSION_FRACTION,
    skip_bad_images: bool = False,
    who: str = "",
) -> BuildResult:
    """Write the version into <store>/<id>/ (atomically) or, if that id exists, verify it and do nothing."""
    if sources.bad and not skip_bad_images:
        shown = "; ".join(f"{b['path']}: {b['reason']}" for b in sources.bad[:5])
        more = f"; ... and {len(sources.bad) - 5} more" if len(sources.bad) > 5 else ""
        raise VersionError(
            f"{len(sources.bad)} image(s) cannot be used: {shown}{more} (--skip-bad-images leaves them out, listed)"
        )
    planned = plan(sources, regression_fraction)
    images = planned["images"]
    if not images:
        raise VersionError("the sources hold no usable labelled image: nothing to build")
    fingerprint = content_fingerprint(images)
    vid = version_id(fingerprint)
    store = Path(store).expanduser().resolve()
    final = store / vid
    if final.exists():
        return BuildResult(read_version(final), created=False)
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{vid}.", dir=store))
    try:
        for image in images:
            target = tmp / image["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            data = Path(image["_from"]).read_bytes()
            if _sha256_bytes(data) != image["sha256"]:
                raise VersionError(f"{image['_from']} changed while the version was being built")
            target.write_bytes(data)
            os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        listed = [{k: v for k, v in i.items() if k != "_from"} for i in images]
        meta = {
            "format": FORMAT,
            "id": vid,
            "fingerprint": fingerprint,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_by": who,
            "parents": sorted(set(sources.parents)),
            "sources": sources.described,
            "regression_fraction": regression_fraction,
            "counts": {which: _counts(listed, which) for which in SETS},
            "images": listed,
            "conflicts": planned["conflicts"],
            "bad_images": sources.bad,
            "left_out": sources.left_out,
            "notes": planned["notes"],
        }
        meta["digest"] = _digest(meta)
        (tmp / VERSION_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp / VERSION_FILE, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            os.rename(tmp, final)
        except OSError:  # built by someone else meanwhile: theirs stands
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return BuildResult(read_version(final), created=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(read_version(final), created=True)
