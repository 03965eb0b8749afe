"""Data set versions (provenance, dedup by content, conflicts, fingerprint id, immutability, the regression set
that only grows) and the promotion gate (`qc_cloud models evaluate-candidate`), with the fleet database
(SQLite and PostgreSQL) holding the re-inspection station's labels and the sample store holding the images.

Models: the brightness classifiers of qc_cell.inference.synthetic_models (known weights, ONNX Runtime), so
"better" and "worse" are by construction: good parts are dark, defects bright; a new, dim defect look escapes
the current model and not the candidate tuned for it. One slow test trains a real tiny model on a version."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from qc_cell.inference.synthetic_models import write_package
from qc_cloud.cli import main
from qc_cloud.training import dataset_versions as dv
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.errors import DatasetError
from qc_contract.model_manifest import DecisionBands

GOOD_LEVELS = range(30, 66, 5)  # P(defect) < 0.5 for every model here
OLD_DEFECT_LEVELS = range(190, 225, 5)  # Defective for every model here
NEW_LOOK_LEVELS = (100, 104, 108)  # dim defect: the current model (gain 2, bias 0) calls it Normal


def part_image(level: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(level + rng.normal(0, 2, (40, 40, 3)), 0, 255).astype(np.uint8)


def write_image(path: Path, level: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), part_image(level, seed))
    return path


def folder(root: Path, *, goods=(), defects=(), seed: int = 0, kind: str = "scratch") -> Path:
    for i, level in enumerate(goods):
        write_image(root / "good" / f"g{i:02d}.png", level, seed * 1000 + i)
    for i, level in enumerate(defects):
        write_image(root / "defect" / kind / f"d{i:02d}.png", level, seed * 1000 + 500 + i)
    return root


def sha_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- data set versions from folders ------------------------------------------------------------------------


def test_version_from_folders_provenance_dedup_conflicts_and_a_fingerprint_id(tmp_path, capsys):
    a = folder(tmp_path / "a", goods=GOOD_LEVELS[:4], defects=OLD_DEFECT_LEVELS[:3], seed=1)
    b = folder(tmp_path / "b", goods=GOOD_LEVELS[4:6], defects=OLD_DEFECT_LEVELS[3:5], seed=2)
    (b / "good" / "same.png").write_bytes((a / "good" / "g00.png").read_bytes())  # duplicate, same label
    (b / "defect" / "scratch" / "flip.png").write_bytes((a / "good" / "g01.png").read_bytes())  # conflicting label
    store = tmp_path / "store"
    argv = ["dataset", "build", "--out", str(store), "--from-folder", str(a), "--from-folder", str(b)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\nconflict:")[0])
    version = dv.read_version(summary["path"])
    assert summary["created"] and version.id == summary["id"] and version.root.name == version.id
    # dedup by content: 7 + 4 images + 2 copies; the duplicate is one image with both origins
    dup = next(i for i in version.images if i["sha256"] == sha_of(a / "good" / "g00.png"))
    assert sorted(p["path"] for p in dup["provenance"]) == ["good/g00.png", "good/same.png"]
    assert {p["folder"] for p in dup["provenance"]} == {str(a.resolve()), str(b.resolve())}
    # the conflict is reported, and the image is in neither set
    conflicts = version.meta["conflicts"]
    assert [c["sha256"] for c in conflicts] == [sha_of(a / "good" / "g01.png")]
    assert conflicts[0]["resolution"] == "left out"
    assert {(x["label"], x["defect_type"]) for x in conflicts[0]["labels"]} == {(0, "good"), (1, "scratch")}
    assert conflicts[0]["sha256"] not in {i["sha256"] for i in version.images}
    assert len(version.images) == 4 + 3 + 2 + 2 - 1
    assert version.meta["counts"] == {"data": {"good": 5, "scratch": 5}, "regression": {}}
    # content-addressed files; `qc_cloud train --data <version>` reads data/ (generic layout)
    assert all(Path(i["file"]).stem == i["sha256"] for i in version.images)
    loaded = load_dataset(version.root, progress=False)
    assert loaded.layout == "generic" and loaded.counts() == {"good": 5, "scratch": 5}
    # same inputs -> same id, elsewhere too; into the same store: a no-op
    assert main(argv) == 0 and '"created": false' in capsys.readouterr().out
    other = dv.Sources()
    dv.add_folder(other, b)
    dv.add_folder(other, a)  # order of the sources does not matter
    assert dv.build(other, tmp_path / "elsewhere").version.id == version.id
    # the content changes -> the id changes
    write_image(a / "good" / "new.png", 50, 99)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.split("\nconflict:")[0])["id"] != version.id


def test_bad_input_is_refused_or_listed_and_skipped(tmp_path, capsys):
    a = folder(tmp_path / "a", goods=GOOD_LEVELS[:3], defects=OLD_DEFECT_LEVELS[:2], seed=3)
    (a / "good" / "broken.png").write_bytes(b"\x89PNG not really")
    store = tmp_path / "store"
    assert main(["dataset", "build", "--out", str(store), "--from-folder", str(a)]) == 2
    err = capsys.readouterr().err
    assert "1 image(s) cannot be used" in err and "broken.png" in err and "--skip-bad-images" in err
    assert not store.exists() or not any(store.iterdir())
    assert main(["dataset", "build", "--out", str(store), "--from-folder", str(a), "--skip-bad-images"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bad_images"] == 1 and out["images"] == 5
    bad = dv.read_version(out["path"]).meta["bad_images"]
    assert bad[0]["path"].endswith("broken.png") and "unreadable image" in bad[0]["reason"]
    assert main(["dataset", "build", "--out", str(store), "--from-folder", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "good").mkdir(parents=True)
    assert main(["dataset", "build", "--out", str(store), "--from-folder", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["dataset", "build", "--out", str(store)]) == 2
    assert "at least one source" in capsys.readouterr().err
    assert main(["dataset", "build", "--out", str(store), "--from-version", "ds-0000"]) == 2
    assert "no data set version" in capsys.readouterr().err


@pytest.mark.parametrize("tamper", ["image", "label", "extra", "missing"])
def test_a_modified_version_is_detected_on_read(tmp_path, tamper):
    a = folder(tmp_path / "a", goods=GOOD_LEVELS[:3], defects=OLD_DEFECT_LEVELS[:2], seed=4)
    sources = dv.Sources()
    dv.add_folder(sources, a)
    version = dv.build(sources, tmp_path / "store").version
    first = version.root / version.images[0]["file"]
    assert not os.access(first, os.W_OK) or os.geteuid() == 0  # files are written read-only
    if tamper == "image":
        os.chmod(first, 0o644)
        first.write_bytes(first.read_bytes() + b"x")
    elif tamper == "label":
        meta_path = version.root / "version.json"
        meta = json.loads(meta_path.read_text())
        meta["images"][0]["label"] = 1 - meta["images"][0]["label"]
        os.chmod(meta_path, 0o644)
        meta_path.write_text(json.dumps(meta))
    elif tamper == "extra":
        write_image(version.root / "data" / "good" / "smuggled.png", 40, 77)
    else:
        first.unlink()
    with pytest.raises(dv.VersionError, match="damaged or was modified"):
        dv.read_version(version.root)
    with pytest.raises(DatasetError, match="damaged or was modified"):
        load_dataset(version.root, progress=False)  # `qc_cloud train --data` refuses it too
    with pytest.raises(dv.VersionError, match="damaged or was modified"):
        dv.build(sources, tmp_path / "store")  # building the same id again does not paper over it


def test_the_regression_set_only_grows(tmp_path):
    store = tmp_path / "store"
    train = folder(tmp_path / "train", goods=GOOD_LEVELS[:4], defects=OLD_DEFECT_LEVELS[:3], seed=5)
    reg = folder(tmp_path / "reg", goods=GOOD_LEVELS[4:6], defects=OLD_DEFECT_LEVELS[3:5], seed=6)
    s1 = dv.Sources()
    dv.add_folder(s1, train)
    dv.add_folder(s1, reg, regression=True)
    v1 = dv.build(s1, store).version
    assert len(v1.shas("regression")) == 4 and len(v1.shas("data")) == 7
    assert not v1.shas("regression") & v1.shas("data")  # held out
    assert load_dataset(v1.root / "regression", progress=False).counts() == {"good": 2, "scratch": 2}
    # v2: v1 + a new folder + more regression images; a regression image relabelled elsewhere stays as it was,
    # a parent's training image asked for the regression set stays in data
    more = folder(tmp_path / "more", goods=GOOD_LEVELS[6:7], defects=NEW_LOOK_LEVELS[:1], seed=7, kind="dim")
    relabel = tmp_path / "relabel"
    write_image(relabel / "defect" / "dent" / "x.png", 0, 0)
    write_image(relabel / "good" / "y.png", 0, 0)
    (relabel / "defect" / "dent" / "x.png").write_bytes((reg / "good" / "g00.png").read_bytes())
    (relabel / "good" / "y.png").write_bytes((train / "good" / "g00.png").read_bytes())
    s2 = dv.Sources()
    dv.add_version(s2, v1.root)
    dv.add_folder(s2, more)
    dv.add_folder(s2, relabel, regression=True)
    v2 = dv.build(s2, store).version
    assert v2.meta["parents"] == [v1.id]
    assert v1.shas("regression") <= v2.shas("regression")
    assert v2.shas("data") >= v1.shas("data") and len(v2.shas("data")) == 9
    kept = next(i for i in v2.images if i["sha256"] == sha_of(reg / "good" / "g00.png"))
    assert (kept["set"], kept["label"]) == ("regression", 0)
    assert v2.meta["conflicts"][0]["resolution"] == "kept in the regression set with its fixed label"
    assert any("a parent trains on it" in n for n in v2.meta["notes"])
    # provenance of inherited images names the version they came through
    inherited = next(i for i in v2.images if i["sha256"] == sha_of(train / "good" / "g01.png"))
    assert inherited["provenance"] == [
        {"kind": "folder", "folder": str(train.resolve()), "path": "good/g01.png", "via": v1.id}
    ]
    # v3 from v2 alone: nothing lost
    s3 = dv.Sources()
    dv.add_version(s3, v2.root)
    assert dv.build(s3, store).version.id == v2.id  # the same content is the same version


# -- the fleet: station labels, hard cases, production slices -------------------------------------------------

CELLS = ("plant1/line1/cell001", "plant1/line1/cell002")


def _jpeg(level: int, seed: int) -> bytes:
    return cv2.imencode(".jpg", part_image(level, seed), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture
def fleet(tmp_path, database_url):
    """A fleet database and sample store holding image samples of two cells, labelled through the station's
    store function (dashboard.data.add_label). Returns (CLI arguments naming it, {part_id: label row inputs})."""
    from qc_cloud.dashboard import data
    from qc_cloud.fleet import db, models, rules, settings
    from qc_cloud.fleet.samples import SampleStore
    from qc_cloud.fleet.store import Message, Store
    from qc_contract import records

    url_file = tmp_path / "db-url"
    url_file.write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), ingest=False)
    engine = db.make_engine(s.resolved_database_url())
    db.upgrade(engine)
    # (cell verdict code, level, operator answer, defect type): 0 NORMAL, 1 REINSPECT, 2 DEFECTIVE
    plan = []
    for level in GOOD_LEVELS[:5]:
        plan.append((0, level, "good", None))  # agreement: not a hard case
    plan.append((1, GOOD_LEVELS[5], "good", None))  # re-inspected: hard
    for level in OLD_DEFECT_LEVELS[:4]:
        plan.append((2, level, "defective", "scratch"))
    for level in NEW_LOOK_LEVELS:
        plan.append((0, level, "defective", "dim"))  # escaped: hard
    plan.append((2, GOOD_LEVELS[6], "good", None))  # false reject: hard
    plan.append((0, GOOD_LEVELS[7], "unsure", None))
    messages, expected = [], {}
    now_ns = time.time_ns()
    for c, cell in enumerate(CELLS):
        for seq, (verdict, level, answer, kind) in enumerate(plan, 1):
            part_id = f"p{c}-{seq:03d}"
            body = records.image_record(
                part_id=part_id, verdict=verdict, defect_probability=(0.2, 0.6, 0.9)[verdict], reasons=["visual"],
                model_version="m-1", capture_ns=now_ns - 10**9 * seq, width=40, height=40,
                jpeg_b64=base64.b64encode(_jpeg(level, 100 * c + seq)).decode(),
            )  # fmt: skip
            envelope = records.envelope(cell, "0badcafe", "sample", seq, body)
            messages.append(Message(f"qc/{cell}/sample", records.encode(envelope)))
            expected[part_id] = (cell, verdict, answer, kind)
    assert Store(engine, SampleStore(s.samples_dir)).write(messages).quarantined == 0
    samples = models.Sample.__table__
    with engine.begin() as conn:
        rows = conn.execute(samples.select()).all()
        for row in rows:
            cell, _, answer, kind = expected[row.part_id]
            data.add_label(conn, cell, row.record_id, answer, kind, "", "operator", rules.utcnow())
        conn.execute(models.Cell.__table__.update().values(model_version="m-1"))
    engine.dispose()
    return ["--data-dir", s.data_dir, "--database-url-file", str(url_file)], expected, Path(s.samples_dir)


def test_version_from_station_labels_records_provenance_and_hard_cases(fleet, tmp_path, capsys):
    where, expected, samples_dir = fleet
    store = tmp_path / "store"
    assert main(["dataset", "build", "--from-fleet", "--out", str(store), "--regression-fraction", "1", *where]) == 0
    summary = json.loads(capsys.readouterr().out)
    version = dv.read_version(summary["path"])
    assert summary["left_out"] == {"label answer 'unsure'": 2}
    # every image of both cells is distinct content (one image per part); 14 decided labels per cell
    assert len(version.images) == 2 * 14 and summary["hard_cases"] == 2 * 5
    for image in version.images:
        (prov,) = image["provenance"]
        cell, verdict, answer, kind = expected[prov["part_id"]]
        assert prov["kind"] == "fleet" and prov["cell"] == cell and prov["labelled_by"] == "operator"
        assert prov["labelled_at"] and prov["cell_verdict"] == ("NORMAL", "REINSPECT", "DEFECTIVE")[verdict]
        assert image["label"] == (answer == "defective") and image["defect_type"] == (kind or "good")
        hard = verdict == 1 or (verdict, answer) in ((0, "defective"), (2, "good"))
        assert image["hard_case"] == hard
        assert image["set"] == ("regression" if hard else "data")  # fraction 1: every hard case
    assert version.meta["counts"]["regression"] == {"dim": 6, "good": 4}
    # the default fraction keeps some hard cases for training, the same ones every time (hash of the image)
    assert main(["dataset", "build", "--from-fleet", "--out", str(store), *where]) == 0
    half = dv.read_version(json.loads(capsys.readouterr().out)["path"])
    reg = half.shas("regression")
    assert 0 < len(reg) < 10 and reg < version.shas("regression")
    # --cells and --since
    assert main(["dataset", "build", "--from-fleet", "--out", str(tmp_path / "s3"), "--cells", CELLS[0], *where]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 14
    assert (
        main(["dataset", "build", "--from-fleet", "--out", str(tmp_path / "s4"), "--since", "2999-01-01", *where]) == 2
    )
    assert "nothing to build" in capsys.readouterr().err
    # a sample whose file is gone from the store: refused, or listed and skipped
    victim = next(i for i in version.images if i["set"] == "data")["sha256"]
    (samples_dir / victim[:2] / f"{victim}.jpg").unlink()
    assert main(["dataset", "build", "--from-fleet", "--out", str(tmp_path / "s2"), *where]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["dataset", "build", "--from-fleet", "--out", str(tmp_path / "s2"), "--skip-bad-images", *where]) == 0
    assert json.loads(capsys.readouterr().out)["bad_images"] == 1


# -- the promotion gate ---------------------------------------------------------------------------------------


def packages(root: Path) -> dict[str, Path]:
    """current: the brightness model; better: tuned so dim defects are caught; worse: inverted."""
    out = {}
    for name, gain, bias in (("current", 2.0, 0.0), ("better", 6.0, 4.0), ("worse", -2.0, 0.0)):
        write_package(root / name, f"{name}-1", gain=gain, bias=bias, golden_levels=(40,))
        out[name] = root / name
    return out


def test_a_worse_candidate_is_blocked_and_a_better_one_promotable(fleet, tmp_path, capsys):
    where, _, _ = fleet
    store = tmp_path / "store"
    reg = folder(tmp_path / "reg", goods=GOOD_LEVELS, defects=NEW_LOOK_LEVELS, seed=8, kind="dim")
    assert main(["dataset", "build", "--from-fleet", "--regression-add", str(reg), "--out", str(store), *where]) == 0
    vid = json.loads(capsys.readouterr().out)["id"]
    pk = packages(tmp_path / "pkg")
    gate = tmp_path / "gate.yaml"
    # latency is measured on a shared test machine: reported, not gated here; point estimates (no paired test):
    # the paired evidence is checked at the end
    gate.write_text("latency_p99_ms: null\nsignificance: null\n")
    common = ["--current", str(pk["current"]), "--version", vid, "--store", str(store), "--from-fleet", *where]
    common += ["--gate", str(gate)]
    # worse: blocked, exit 3, the blocking figure named with both values
    assert (
        main(["models", "evaluate-candidate", "--candidate", str(pk["worse"]), *common, "--out", str(tmp_path / "w")])
        == 3
    )
    out = capsys.readouterr().out
    assert f"BLOCKED by escape_rate on cell:{CELLS[0]}: candidate 0.5714, current 0.4286" in out
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert not report["gate"]["promotable"]
    blocked = {(c["slice"], c["figure"]) for c in report["gate"]["blocked_by"]}
    assert {("regression", "false_reject_rate"), ("all", "roc_auc"), (f"cell:{CELLS[1]}", "escape_rate")} <= blocked
    assert (f"cell:{CELLS[0]}", "escape_rate[scratch]") in blocked  # per defect type
    assert ("regression", "escape_rate") not in blocked  # it lets no dim part through: better there
    first = report["gate"]["blocked_by"][0]
    assert first["candidate"] > first["current"] + first["tolerance"]
    md = (tmp_path / "w" / "report.md").read_text()
    assert "**BLOCKED** by: false_reject_rate on regression" in md and "**BLOCKS**" in md
    assert set(report["slices"]) == {"regression", f"cell:{CELLS[0]}", f"cell:{CELLS[1]}", "all"}
    cell = report["slices"][f"cell:{CELLS[0]}"]
    assert (cell["n_images"], cell["n_good"], cell["n_defective"]) == (14, 7, 7)  # unsure left out
    assert report["left_out"] == {"label answer 'unsure'": 2}
    assert "the candidate was not trained on a data set version: overlap with the slices not checked" in report["notes"]
    assert report["latency"]["candidate"]["images"] == report["slices"]["all"]["n_images"]  # each image once
    # better: promotable, exit 0; its escape rate on the dim look is lower, nothing else worse
    argv = ["models", "evaluate-candidate", "--candidate", str(pk["better"]), *common, "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    assert "PROMOTABLE" in capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    dim = report["slices"]["regression"]
    assert (
        dim["current"]["per_type"]["dim"]["escape_rate"] == 1.0
        and dim["candidate"]["per_type"]["dim"]["escape_rate"] == 0.0
    )
    assert report["gate"]["promotable"] and report["gate"]["checks"]
    assert report["models"]["candidate"]["bands"] == {"low": 0.5, "high": 0.8, "basis": "cell defaults"}

    # the same model at the bands its manifest proposes (a cell with bands: from_model runs it so): bands this low
    # reject good parts, and the gate says so; the report names the manifest's bands. Bands that missed their
    # targets (feasible false) are not applied: that model is judged at the cell defaults.
    def banded(name: str, feasible: bool) -> list[str]:
        bands = DecisionBands(reinspect=0.05, defective=0.1, feasible=feasible)
        package = tmp_path / "pkg" / name
        write_package(package, f"{name}-1", gain=6.0, bias=4.0, golden_levels=(40,),
                      manifest_overrides={"decision_bands": bands})  # fmt: skip
        return ["models", "evaluate-candidate", "--candidate", str(package), *common]

    argv = banded("banded", feasible=True)
    assert main([*argv, "--out", str(tmp_path / "c")]) == 3
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["models"]["candidate"]["bands"] == {"low": 0.05, "high": 0.1, "basis": "manifest decision_bands"}
    assert ("all", "false_reject_rate") in {(c["slice"], c["figure"]) for c in report["gate"]["blocked_by"]}
    assert main([*argv, "--bands", "0.5,0.8", "--out", str(tmp_path / "d")]) == 0  # --bands overrides both
    assert main([*banded("missed", feasible=False), "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["models"]["candidate"]["bands"] == {"low": 0.5, "high": 0.8, "basis": "cell defaults"}
    # the default gate asks the paired evidence: the worse model is still blocked where it is worse beyond chance,
    # but one image's difference on a 7-part slice (escape 4/7 vs 3/7) is within chance, and the report says so
    gate.write_text("latency_p99_ms: null\n")
    argv = ["models", "evaluate-candidate", "--candidate", str(pk["worse"]), *common, "--out", str(tmp_path / "e")]
    assert main(argv) == 3
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    blocked = {(c["slice"], c["figure"]) for c in report["gate"]["blocked_by"]}
    assert ("all", "roc_auc") in blocked and ("regression", "false_reject_rate") in blocked, blocked
    (one_image,) = [
        c for c in report["gate"]["checks"] if (c["slice"], c["figure"]) == (f"cell:{CELLS[0]}", "escape_rate")
    ]
    assert one_image["passed"] and one_image["candidate"] > one_image["current"] + one_image["tolerance"]
    assert one_image["evidence"]["test"] == "mcnemar" and one_image["evidence"]["p"] >= 0.05
    assert all(c["evidence"]["significant"] for c in report["gate"]["blocked_by"] if "evidence" in c)
    assert "paired evidence" in (tmp_path / "e" / "report.md").read_text()


def test_gate_config_and_bad_input(tmp_path, capsys):
    from qc_cloud.training import candidate

    assert candidate.load_gate(None) == {**candidate.DEFAULT_GATE, "significance": candidate.DEFAULT_SIGNIFICANCE}
    # latency is relative, and blind to sub-millisecond noise; AUC: lower is worse; rates: higher is worse
    assert candidate._worse("latency_p99_ms", 4.0, 8.5, 1.0) and not candidate._worse("latency_p99_ms", 4.0, 7.9, 1.0)
    assert not candidate._worse("latency_p99_ms", 0.05, 0.4, 1.0)
    assert candidate._worse("roc_auc", 0.95, 0.92, 0.02) and not candidate._worse("roc_auc", 0.95, 0.94, 0.02)
    assert candidate._worse("escape_rate", 0.10, 0.11, 0.0) and not candidate._worse("escape_rate", 0.1, 0.1, 0.0)
    pk = packages(tmp_path / "pkg")
    reg = folder(tmp_path / "reg", goods=GOOD_LEVELS[:3], defects=OLD_DEFECT_LEVELS[:3], seed=9)
    sources = dv.Sources()
    dv.add_folder(sources, reg, regression=True)
    version = dv.build(sources, tmp_path / "store").version
    base = ["models", "evaluate-candidate", "--candidate", str(pk["better"]), "--current", str(pk["current"])]
    base += ["--version", str(version.root), "--out", str(tmp_path / "r")]
    for text, message in (
        ("escape_rate: -1\n", "tolerance >= 0"),
        ("escapes: 0.1\n", "unknown figure 'escapes'"),
        ("[1, 2]\n", "a mapping of figure"),
        ("significance: 1.5\n", "significance must be a level in (0, 1) or null"),
        ("significance: true\n", "significance must be a level in (0, 1) or null"),
    ):
        (tmp_path / "gate.yaml").write_text(text)
        assert main([*base, "--gate", str(tmp_path / "gate.yaml")]) == 2
        assert message in capsys.readouterr().err
    assert main([*base, "--bands", "0.9,0.1"]) == 2
    assert main(["models", "evaluate-candidate", "--candidate", str(pk["better"]), "--current", str(pk["current"]),
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "nothing to evaluate on" in capsys.readouterr().err
    broken = tmp_path / "pkg" / "broken"
    write_package(broken, "broken-1")
    (broken / "model.onnx").write_bytes(b"not a model")
    assert main([*base[:2], "--candidate", str(broken), *base[4:]]) == 2
    assert "manifest says" in capsys.readouterr().err
    # a tolerance that lets the worse model through is the user's explicit choice
    (tmp_path / "gate.yaml").write_text(
        "escape_rate: 1\nper_type_escape_rate: 1\nfalse_reject_rate: 1\nreinspect_load: 1\nroc_auc: 1\n"
        "latency_p99_ms: null\n"
    )
    argv = [*base[:2], "--candidate", str(pk["worse"]), *base[4:], "--gate", str(tmp_path / "gate.yaml")]
    assert main(argv) == 0
    assert "Not gated: latency_p99_ms" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.slow
def test_a_model_trained_on_a_version_is_evaluated_against_the_current_one(tmp_path, capsys):
    """`qc_cloud train --data <version>` reads a version directly; its package goes through the gate."""
    store = tmp_path / "store"
    train = folder(tmp_path / "train", goods=[*GOOD_LEVELS] * 2, defects=[*OLD_DEFECT_LEVELS] * 2, seed=10)
    reg = folder(tmp_path / "reg", goods=GOOD_LEVELS[:4], defects=OLD_DEFECT_LEVELS[:4], seed=11)
    argv = ["dataset", "build", "--out", str(store), "--from-folder", str(train), "--regression-add", str(reg)]
    assert main(argv) == 0
    version = dv.read_version(json.loads(capsys.readouterr().out)["path"])
    tiny = ["--input-size", "64", "--phase1-epochs", "2", "--phase2-epochs", "1", "--no-progress", "--threads", "2"]
    assert main(["train", "--data", str(version.root), "--out", str(tmp_path / "cand"), "--version", "t-2", *tiny]) == 0
    from qc_contract.model_manifest import Manifest

    assert (
        Manifest.load(tmp_path / "cand").dataset["fingerprint"]
        == load_dataset(version.root, progress=False).fingerprint
    )
    write_package(tmp_path / "current", "current-1", gain=-2.0, golden_levels=(40,))  # an inverted model
    (tmp_path / "gate.yaml").write_text("latency_p99_ms: null\n")
    argv = ["models", "evaluate-candidate", "--candidate", str(tmp_path / "cand"),
            "--current", str(tmp_path / "current"), "--version", str(version.root),
            "--gate", str(tmp_path / "gate.yaml"), "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["slices"]["regression"]["n_images"] == 8
    assert report["latency"]["candidate"]["p50_ms"] > 0
    assert Manifest.load(tmp_path / "cand").dataset["version"] == version.id
    assert f"candidate trained on data set version {version.id}" in report["notes"]
    # A later version whose regression set holds the candidate's training images (a hard case re-labelled, say):
    # the gate leaves them out instead of scoring the candidate on what it learnt from.
    capsys.readouterr()
    argv = ["dataset", "build", "--out", str(store), "--regression-add", str(train), "--regression-add", str(reg)]
    assert main(argv) == 0
    later = json.loads(capsys.readouterr().out)["id"]
    argv = ["models", "evaluate-candidate", "--candidate", str(tmp_path / "cand"), "--current",
            str(tmp_path / "current"), "--version", later, "--store", str(store), "--gate", str(tmp_path / "gate.yaml"),
            "--out", str(tmp_path / "r2")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["slices"]["regression"]["n_images"] == 8, report["notes"]
    assert any(n.endswith("image(s) the candidate was trained on left out of every slice") for n in report["notes"])


def test_mcnemar_counts_only_the_images_where_the_models_differ():
    from qc_cloud.training.paired_stats import mcnemar_worse_p

    cur = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert mcnemar_worse_p(cur, cur) == (0, 0, 1.0)  # the same events: no evidence either way
    b, c, p = mcnemar_worse_p(np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool), cur)
    assert (b, c, p) == (1, 0, 0.5)  # one image more: a coin flip
    worse = np.ones(8, dtype=bool)
    b, c, p = mcnemar_worse_p(worse, cur)
    assert (b, c) == (6, 0) and p == 0.5**6  # six images only the candidate gets wrong: not chance
    _, _, p_mixed = mcnemar_worse_p(np.array([0, 0, 1, 1, 1, 1, 0, 0], dtype=bool), cur)
    assert p_mixed > 0.05  # four new errors, two fixed
