"""End to end through the `qc_cloud` command line: train (both layouts, both backbones), the model package
and its manifest as the edge reads it, the report, re-export (fp16) and evaluate, and the bad inputs.

Tiny runs (64 px inputs, 1-2 epochs): these check that the tools are wired correctly and the artefacts are
right, not how good the model gets (that is the default model's report, models/default/report.md)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from training_data import generic_dataset, mvtec_dataset

from qc_cell.inference.backends import BackendOptions, create_backend
from qc_cell.inference.model import LoadedModel
from qc_cloud.cli import main
from qc_cloud.training.config import TrainConfig
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.errors import ConfigError
from qc_cloud.training.evaluate import OnnxScorer
from qc_cloud.training.splits import MVTEC_CAVEAT, Split
from qc_contract.model_manifest import TFLITE, Manifest, ManifestError

TINY = ["--input-size", "64", "--phase1-epochs", "2", "--phase2-epochs", "1", "--no-progress", "--threads", "2"]


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """efficientnet_lite0 (pretrained, feature cache) on the synthetic generator's MVTec-layout data."""
    base = tmp_path_factory.mktemp("lite0")
    data = mvtec_dataset(base / "data", n_train_good=8, n_test_good=4, n_per_defect=3, size=64)
    out, ckpt = base / "package", base / "best.pt"
    rc = main(["train", "--data", str(data), "--out", str(out), "--checkpoint", str(ckpt), "--version", "t-1", *TINY])
    assert rc == 0
    return data, out, ckpt


def test_package_manifest_is_what_the_edge_reads(lite0_run):
    data, out, _ = lite0_run
    manifest = Manifest.load(out)
    manifest.verify_model_file(out)  # sha256 and size
    assert manifest.version == "t-1" and manifest.architecture == "efficientnet_lite0"
    pre = manifest.preprocessing
    assert (pre.input_height, pre.input_width, pre.color_order, pre.normalization) == (64, 64, "RGB", TFLITE)
    assert manifest.input_name == "input" and manifest.output.name == "logit"
    assert manifest.output.semantics == "sigmoid_logit" and manifest.output.features == "features"
    assert len(manifest.output.classifier_weights) == 1280
    assert manifest.dataset["fingerprint"] == load_dataset(data, progress=False).fingerprint
    assert manifest.dataset["layout"] == "mvtec"
    types = sorted(t for t in manifest.dataset["per_type"] if t != "good")  # the class folders but good
    assert types and manifest.dataset["defect_types"] == types and manifest.defect_types == tuple(types)
    assert manifest.training["command"] and manifest.training["config"]["seed"] == 0
    assert set(manifest.metrics) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "defect_escape_rate"}
    assert len(manifest.golden) == 6 and all((out / g.file).is_file() for g in manifest.golden)
    ref = manifest.drift_reference  # the validation split's histograms (drift alerts, issue 22)
    n_val = json.loads((out / "report.json").read_text())["calibration"]["n_val"]
    assert ref is not None and ref.parts == n_val > 0
    assert all(sum(ref.histograms[s]) == n_val for s in ("brightness", "contrast", "sharpness", "defect_probability"))


def test_edge_loads_the_package_and_passes_its_golden_self_test(lite0_run):
    _, out, _ = lite0_run
    manifest = Manifest.load(out)
    backend = create_backend("onnxruntime", out / manifest.model_file, manifest, BackendOptions(max_batch=4))
    model = LoadedModel(out, manifest, backend)
    assert "6/6" in model.self_test()
    scores = model.score(np.zeros((3, 3, 64, 64), np.float32), want_features=True)
    assert scores.probabilities.shape == (3,) and scores.features.shape[:2] == (3, 1280)
    assert model.heatmap(scores.features[0]) is not None


def test_onnx_graph_contract(lite0_run):
    proto = onnx.load(str(lite0_run[1] / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    scorer = OnnxScorer(lite0_run[1] / "model.onnx")
    assert scorer.logits(np.zeros((5, 3, 64, 64), np.float32)).shape == (5,)


def test_report_split_and_config_are_recorded(lite0_run):
    data, out, _ = lite0_run
    report = json.loads((out / "report.json").read_text())
    test = report["test"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix", "bands", "per_type"):
        assert key in test, key
    assert sum(test["confusion_matrix"].values()) == test["n_images"] == len(report["test_images"])
    bands = test["bands"]
    assert (bands["low"], bands["high"]) == (0.5, 0.8)
    assert {"fraction_reinspect", "defect_escape_rate", "false_reject_rate"} <= set(bands)
    assert report["model"]["parity"]["max_abs_logit_diff"] < 1e-3
    assert [h["phase"] for h in report["history"]] == [1, 1, 2]
    assert MVTEC_CAVEAT in report["caveats"]
    for name in ("roc", "precision_recall", "score_histogram", "training_curves"):
        image = cv2.imread(str(out / report["plots"][name]))
        assert image is not None and image.shape[0] > 100, name
    markdown = (out / "report.md").read_text()
    assert "defect escape rate" in markdown and "MVTec AD" in markdown and "plots/roc.png" in markdown
    split = Split.load(out / "split.json")
    split.check_matches(load_dataset(data, progress=False))
    test_paths = {i["path"] for i in report["test_images"]}
    assert test_paths == {p for p, s in split.assignment.items() if s == "test"}, "report scores the test split"
    assert TrainConfig.load(out / "train_config.json").input_size == 64


def test_reexport_fp16_and_evaluate_the_package(lite0_run, tmp_path, capsys):
    data, out, ckpt = lite0_run
    fp16 = tmp_path / "fp16"
    assert (
        main(["export", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(fp16), "--fp16", "--no-progress"])
        == 0
    )
    size32, size16 = (out / "model.onnx").stat().st_size, (fp16 / "model.onnx").stat().st_size
    assert size16 < 0.6 * size32
    Manifest.load(fp16).verify_model_file(fp16)
    assert json.loads((fp16 / "report.json").read_text())["model"]["fp16"] is True
    report_dir = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--package",
                str(out),
                "--data",
                str(data),
                "--split",
                str(out / "split.json"),
                "--out",
                str(report_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    evaluated = json.loads((report_dir / "report.json").read_text())
    trained = json.loads((out / "report.json").read_text())
    assert evaluated["test"]["roc_auc"] == pytest.approx(trained["test"]["roc_auc"])
    assert len(evaluated["golden_check"]) == 6
    printed = capsys.readouterr().out
    assert "test split: " in printed
    assert f"model package: {out} (version" in printed, f"evaluate names the package it scored: {printed}"
    assert f"report: {report_dir / 'report.md'}" in printed


def test_evaluate_rejects_a_package_whose_manifest_does_not_match(lite0_run, tmp_path, capsys):
    import shutil

    data, out, _ = lite0_run
    pkg = tmp_path / "pkg"
    shutil.copytree(out, pkg)
    with open(pkg / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert (
        main(["evaluate", "--package", str(pkg), "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"])
        == 2
    )
    assert "bytes, manifest says" in capsys.readouterr().err
    shutil.copyfile(out / "model.onnx", pkg / "model.onnx")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["preprocessing"]["input_height"] = manifest["preprocessing"]["input_width"] = 96
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="does not match the manifest's preprocessing"):
        OnnxScorer.from_package(pkg)
    manifest["preprocessing"]["input_height"] = manifest["preprocessing"]["input_width"] = 64
    manifest["golden"][0]["score"] = 1.0 - manifest["golden"][0]["score"]
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    assert (
        main(["evaluate", "--package", str(pkg), "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"])
        == 2
    )
    assert "golden image" in capsys.readouterr().err


def test_b0_from_scratch_on_the_generic_layout_without_cache(tmp_path):
    """The other backbone, the other layout, Phase I without the feature cache, no feature-map output."""
    data = generic_dataset(tmp_path / "data", n_good=12, n_per_defect=6, size=64, nested=True)
    out = tmp_path / "b0"
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--backbone",
            "efficientnet_b0",
            "--no-feature-cache",
            "--no-features",
            "--batch-size",
            "8",
            *TINY,
        ]
    )
    assert rc == 0
    manifest = Manifest.load(out)
    manifest.verify_model_file(out)
    assert manifest.architecture == "efficientnet_b0"
    assert manifest.preprocessing.normalization.mean == (0.485, 0.456, 0.406), "ImageNet normalisation for B0"
    assert manifest.output.features is None and manifest.output.classifier_weights is None
    assert all(g.file.endswith(".png") for g in manifest.golden), "JPEG golden images are stored as PNG"
    backend = create_backend("onnxruntime", out / manifest.model_file, manifest, BackendOptions())
    assert "6/6" in LoadedModel(out, manifest, backend).self_test()
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["layout"] == "generic" and report["caveats"] == []
    assert report["training"]["config"]["feature_cache"] is False
    assert "phase1_feature_cache_s" not in report["training"]["timings"]
    assert set(report["test"]["per_type"]) == {"good", "bar", "blob"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root.mkdir(), "no images"),
        (lambda root: mvtec_dataset(root, n_train_good=3, n_test_good=2, n_per_defect=0), "only good images"),
        (
            lambda root: generic_dataset(root, n_good=4, n_per_defect=3).joinpath("good", "x.png").write_text("?"),
            "unreadable image",
        ),
    ],
    ids=["empty", "one-class", "unreadable"],
)
def test_train_refuses_bad_data_with_a_clear_message(tmp_path, capsys, make, message):
    make(tmp_path / "data")
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("qc_cloud train: error:") and message in err
    assert not (tmp_path / "out").exists(), "nothing written for a refused run"


def test_bad_configuration(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "learning_rate": 0.1}))
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown training configuration key(s) ['learning_rate']" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="phase1_lr"):
        TrainConfig(phase1_lr=0)
    with pytest.raises(ConfigError, match="no data set"):
        main_config = TrainConfig()
        from qc_cloud.training.pipeline import resolved_data

        with resolved_data(main_config, None):
            pass


def test_a_failed_export_leaves_the_previous_package_untouched(lite0_run, tmp_path, monkeypatch):
    import shutil

    from qc_cloud.training import pipeline
    from qc_cloud.training.checkpoint import load_checkpoint
    from qc_cloud.training.errors import ExportError

    data, out, ckpt = lite0_run
    pkg = tmp_path / "pkg"
    shutil.copytree(out, pkg)
    before = {p.relative_to(pkg): p.read_bytes() for p in pkg.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise ExportError("injected evaluation failure")

    monkeypatch.setattr(pipeline, "evaluate", fail)
    checkpoint = load_checkpoint(ckpt)
    dataset = load_dataset(data, progress=False)
    with pytest.raises(ExportError, match="injected"):
        pipeline.package_model(
            checkpoint.model,
            checkpoint.config,
            dataset,
            Split.from_dict(checkpoint.split),
            pkg,
            training=None,
            history=None,
            progress=False,
        )
    after = {p.relative_to(pkg): p.read_bytes() for p in pkg.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"], "no staging folder left behind"


def test_dataset_command_prints_the_split_and_records_it(tmp_path, capsys):
    data = generic_dataset(tmp_path / "data", n_good=9, n_per_defect=4)
    assert main(["dataset", "--data", str(data), "--split-out", str(tmp_path / "split.json"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[: printed.rindex("}") + 1])
    assert summary["per_type"] == {"bar": 4, "blob": 4, "good": 9} and summary["layout"] == "generic"
    assert sum(sum(c.values()) for c in summary["split"].values()) == 17
    Split.load(tmp_path / "split.json").check_matches(load_dataset(data, progress=False))


def test_kept_synthetic_data_must_match_the_recipe(tmp_path):
    from qc_cloud.training.config import SyntheticData
    from qc_cloud.training.pipeline import resolved_data

    config = TrainConfig(
        synthetic=SyntheticData(n_train_good=3, n_test_good=3, n_test_per_defect=3, width=48, height=48)
    )
    with resolved_data(config, None, tmp_path / "syn") as root:
        assert load_dataset(root, progress=False).counts()["good"] == 6
    other = TrainConfig.from_dict({**config.to_dict(), "synthetic": {**config.to_dict()["synthetic"], "seed": 1}})
    with pytest.raises(ConfigError, match="seed: 0 != 1"), resolved_data(other, None, tmp_path / "syn"):
        pass


def test_roi_and_synthetic_crop_from_a_config_file(tmp_path):
    """`roi` becomes the manifest preprocessing's crop; `synthetic.crop` writes only that region of each frame, and
    a kept set written with a crop is reused by the same recipe (JSON lists against the config's tuples)."""
    from qc_cloud.training.config import SyntheticData
    from qc_cloud.training.pipeline import preprocessing_for, resolved_data

    synthetic = {"n_train_good": 2, "n_test_good": 2, "n_test_per_defect": 1, "width": 64, "height": 48}
    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps({"input_size": 32, "roi": [8, 0, 48, 48], "synthetic": {**synthetic, "crop": [8, 0, 48, 48]}})
    )
    config = TrainConfig.load(path)
    assert config.roi == (8, 0, 48, 48) and config.synthetic.crop == (8, 0, 48, 48)
    assert preprocessing_for(config).roi == (8, 0, 48, 48)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # as train_config.json
    for _ in range(2):  # generated, then reused
        with resolved_data(config, None, tmp_path / "syn") as root:
            assert cv2.imread(str(root / "train" / "good" / "000.png")).shape == (48, 48, 3)
    with pytest.raises(ConfigError, match="not inside the 64x48 frame"):
        SyntheticData(**synthetic, crop=(20, 0, 48, 48))
    with pytest.raises(ConfigError, match="roi must be"):
        TrainConfig(roi=(0, 0, 0, 10))
