"""Issue 25: the harder synthetic benchmark, the adaptive recipe and its presets, calibration (fit, manifest, the
edge applying it exactly as training did), band proposals, and the good-parts-only anomaly model (ONNX parity,
through the cell's model loader with its heatmap and overlay).

Tiny runs (64 px, 1-3 epochs) check the wiring and the artefacts; how good the models get on the benchmarks is
measured by bench/bench_recipes.py."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json

import cv2
import numpy as np
import pytest
import torch
from training_data import mvtec_dataset

from qc_cell.bridge.sampler import encode_jpeg
from qc_cell.inference.backends import BackendOptions, create_backend
from qc_cell.inference.model import LoadedModel
from qc_cell.inference.overlay import render
from qc_cloud.cli import main
from qc_cloud.training.augment import NO_AUGMENTATION, PAPER_AUGMENTATION, Augmentation
from qc_cloud.training.batches import IMAGE_CHANNEL_ORDER, offloaded_image
from qc_cloud.training.calibration import apply_calibration, fit_calibration, propose_bands, reliability
from qc_cloud.training.config import TrainConfig, resolve_input_size
from qc_cloud.training.datasets import load_dataset, read_image
from qc_cloud.training.errors import ConfigError, DatasetError
from qc_cloud.training.evaluate import OnnxScorer
from qc_cloud.training.models import build_model, layerwise_groups, unfreeze_top
from qc_cloud.training.trainer import cosine_factor
from qc_contract.model_manifest import DecisionBands, Manifest, ManifestError, Output, Preprocessing
from qc_contract.preprocess import preprocess
from qc_contract.synthetic import make_generator, write_mvtec_dataset
from qc_contract.synthetic_surface import DRIFT_PERIOD, SURFACE_DEFECT_TYPES

TINY = ["--input-size", "64", "--no-progress", "--threads", "1"]


# -- the harder benchmark ---------------------------------------------------------------------------------


def test_surface_parts_are_deterministic_with_small_low_contrast_defects():
    gen = make_generator("surface", seed=3, width=160, height=160)
    for defect in SURFACE_DEFECT_TYPES:
        a, b = gen.part_with(7, defect), gen.part_with(7, defect)
        np.testing.assert_array_equal(a.image, b.image)
        area = (a.mask > 0).mean()
        assert 0 < area < 0.02, f"{defect}: a few pixels of the image, got {area:.4f}"
        good = gen.part_with(7, None)
        assert good.mask.max() == 0 and good.label == "good" and a.label == "defect"
        diff = np.abs(a.image.astype(int) - good.image.astype(int)).max(axis=2)
        assert diff[a.mask == 0].mean() < 1.0  # the same part, changed only at the defect
        assert 8 < diff[a.mask > 0].max() < 80, f"{defect}: low contrast, not invisible"


def test_surface_lighting_drifts_along_the_part_index():
    gen = make_generator("surface", seed=0, width=64, height=64)
    quarter = DRIFT_PERIOD // 4
    bright = np.mean(
        [gen.part_with(quarter + i, None).image.mean() / gen.part_with(i, None).image.mean() for i in range(8)]
    )
    dark = np.mean(
        [gen.part_with(3 * quarter + i, None).image.mean() / gen.part_with(i, None).image.mean() for i in range(8)]
    )
    assert bright > 1.05 and dark < 0.95  # exposure up a quarter cycle in, down three quarters in


def test_writer_makes_an_imbalanced_surface_set_with_masks(tmp_path):
    root = write_mvtec_dataset(
        tmp_path / "s", n_train_good=6, n_test_good=2, n_test_per_defect=1, width=48, height=48, product="surface"
    )
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["product"] == "surface" and meta["defect_types"] == list(SURFACE_DEFECT_TYPES)
    assert all((root / "ground_truth" / t / "000_mask.png").is_file() for t in SURFACE_DEFECT_TYPES)
    with pytest.raises(ValueError, match="unknown product"):
        write_mvtec_dataset(tmp_path / "x", n_train_good=1, n_test_good=1, n_test_per_defect=1, product="tile")


# -- recipe and presets -----------------------------------------------------------------------------------


def test_presets_and_input_size_from_the_data():
    paper = TrainConfig.preset_config("paper")
    assert (paper.input_size, paper.phase1_epochs, paper.phase1_lr, paper.phase2_epochs) == (224, 40, 1e-4, 6)
    assert (paper.unfreeze_fraction, paper.phase2_lr, paper.augmentation) == (0.4, 1e-5, PAPER_AUGMENTATION)
    adaptive = TrainConfig()
    assert adaptive.input_size == 0 and adaptive.phase1_epochs > 100 and adaptive.phase2_schedule == "cosine"
    assert resolve_input_size(adaptive, [(300, 300)] * 3) == 288
    assert resolve_input_size(adaptive, [(1024, 768)]) == 384  # capped: the edge pays with the square
    assert resolve_input_size(adaptive, [(64, 64)]) == 64  # never blown up
    assert resolve_input_size(paper, [(1024, 1024)]) == 224
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.preset_config("fast")
    with pytest.raises(ConfigError, match="method"):
        TrainConfig(method="svm")


def test_industrial_augmentation_keeps_shape_and_the_paper_draws():
    rng_image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    out = Augmentation().apply(rng_image, np.random.default_rng(1))
    assert out.shape == rng_image.shape and out.dtype == np.uint8
    # The paper's preset is the old augmentation: same draws, same pixels as before the new options existed.
    a = PAPER_AUGMENTATION.apply(rng_image, np.random.default_rng(5))
    b = PAPER_AUGMENTATION.apply(rng_image, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    flips = Augmentation(
        rotation_deg=0,
        zoom=0,
        hflip=False,
        brightness=(1, 1),
        vflip=True,
        rot90=False,
        contrast=0,
        blur_sigma=0,
        noise_std=0,
        jpeg_prob=0,
    )
    seen = {flips.apply(rng_image, np.random.default_rng(s)).tobytes() for s in range(12)}
    assert rng_image[::-1].tobytes() in seen and rng_image.tobytes() in seen


def test_jpeg_recompression_is_a_real_round_trip_within_the_quality_range():
    # A smooth image (as a part is): JPEG changes it by a few grey levels, not into noise.
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.dstack([np.add.outer(ramp, ramp) / 2] * 3).astype(np.uint8)
    only_jpeg = dataclasses.replace(NO_AUGMENTATION, jpeg_prob=1.0, jpeg_quality=(60, 95))
    out = only_jpeg.apply(image, np.random.default_rng(3))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    candidates = [cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])[1], 1) for q in range(60, 96)]
    assert any(np.array_equal(out, c) for c in candidates), "not a JPEG round trip at a quality in 60..95"
    grey = only_jpeg.apply(image[:, :, 0], np.random.default_rng(3))
    assert grey.shape == image.shape[:2]
    assert not NO_AUGMENTATION.jpeg_prob and not PAPER_AUGMENTATION.jpeg_prob and Augmentation().jpeg_prob > 0
    for bad in ({"jpeg_prob": 1.5}, {"jpeg_quality": (95, 60)}, {"jpeg_quality": (0, 90)}):
        with pytest.raises(ValueError, match="jpeg"):
            Augmentation(**bad)
    config = TrainConfig.from_dict({"augmentation": {"jpeg_prob": 0.3, "jpeg_quality": [70, 90]}})
    assert config.augmentation.jpeg_quality == (70, 90) and config.augmentation.jpeg_prob == 0.3


def test_a_verifier_model_can_learn_the_jpeg_of_images_offloaded_at_its_input_side():
    """jpeg_at_input: the round trip is made on the region reduced as the bridge reduces an offloaded image, so
    the training input is what a verifier scores (the bridge's encoder, decoded, then preprocess)."""
    rng_image = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    spec = Preprocessing(input_width=32, input_height=32, roi=(40, 10, 80, 60))
    at_input = dataclasses.replace(NO_AUGMENTATION, jpeg_prob=1.0, jpeg_quality=(80, 80), jpeg_at_input=1.0)
    reduced = at_input.apply(rng_image, np.random.default_rng(1), reduce=lambda im: offloaded_image(im, spec))
    sent, width, height = encode_jpeg(rng_image[10:70, 40:120], 80, 32, interpolation=cv2.INTER_LINEAR)
    received = cv2.imdecode(np.frombuffer(base64.b64decode(sent), np.uint8), cv2.IMREAD_COLOR)
    assert (width, height) == (32, 24) and np.array_equal(reduced, received), "what the verifier receives"
    # Without a reduce (or at share 0) the round trip stays at the source size.
    assert at_input.apply(rng_image, np.random.default_rng(1)).shape == rng_image.shape
    source = dataclasses.replace(at_input, jpeg_at_input=0.0)
    assert source.apply(rng_image, np.random.default_rng(1), reduce=lambda im: im[:8]).shape == rng_image.shape
    with pytest.raises(ValueError, match="jpeg_at_input"):
        Augmentation(jpeg_at_input=1.5)


def test_discriminative_learning_rates_and_the_cosine_schedule():
    with torch.no_grad():
        model = build_model("efficientnet_lite0", input_size=64)
    unfreeze_top(model, 1.0)
    groups = layerwise_groups(model, 1e-3, 0.8)
    lrs = [g["lr"] for g in groups]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    factors = [cosine_factor(e, 10, 1, 0.01) for e in range(10)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.01) and all(a >= b for a, b in itertools.pairwise(factors[1:]))


# -- calibration and bands ----------------------------------------------------------------------------------


def test_platt_fit_recovers_a_known_calibration_and_lowers_the_ece():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 4000)
    y = rng.random(4000) < apply_calibration(z, (0.5, -1.0))  # true P = sigmoid(0.5 z - 1)
    scale, shift = fit_calibration(z, y, "platt")
    assert scale == pytest.approx(0.5, abs=0.06) and shift == pytest.approx(-1.0, abs=0.15)
    before = reliability(apply_calibration(z, None), y)["ece"]
    after = reliability(apply_calibration(z, (scale, shift)), y)["ece"]
    assert before > 0.1 and after < 0.03
    t_scale, t_shift = fit_calibration(z, y, "temperature")
    assert t_shift == 0.0 and t_scale > 0
    assert fit_calibration(z, np.zeros(4000), "platt") is None  # one class: nothing to fit


def test_band_proposal_meets_targets_or_says_it_cannot():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(900), np.ones(100)]
    separable = np.r_[rng.uniform(0, 0.3, 900), rng.uniform(0.6, 1.0, 100)]
    bands = propose_bands(separable, labels, target_escape=0.01, reinspect_budget=0.05)
    assert bands["feasible"] and bands["escape_rate"] <= 0.01 and bands["reinspect_share"] <= 0.05
    assert 0 < bands["low"] < bands["high"] <= 1
    overlapping = rng.uniform(0, 1, 1000)
    bands = propose_bands(overlapping, labels, target_escape=0.01, reinspect_budget=0.05)
    assert not bands["feasible"] and "false rejects" in bands["reason"]  # only by rejecting most good parts
    assert bands["escape_first"]["false_reject_rate"] > 0.5 and bands["escape_first"]["escape_rate"] <= 0.01
    # proposed instead: what a line can run, both budgets kept, the least escape within them
    assert bands["reinspect_share"] <= 0.05 and bands["false_reject_rate"] <= 0.05 and bands["escape_rate"] > 0.01
    assert 0 < bands["low"] < bands["high"] <= 1 and f"escape {bands['escape_rate']:.1%}" in bands["reason"]
    looser = propose_bands(overlapping, labels, target_escape=0.01, reinspect_budget=0.3, max_false_reject=0.2)
    assert looser["escape_rate"] < bands["escape_rate"], "larger budgets buy a lower escape"


@pytest.mark.parametrize("pooling", ["max", "gem"])
def test_head_pooling_is_configurable_and_exports_exactly(pooling, tmp_path):
    from qc_cloud.training.export import check_parity, export_onnx

    with pytest.raises(ConfigError, match="pooling must be one of"):
        TrainConfig(pooling="median")
    assert TrainConfig.preset_config("paper").pooling == "avg"
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", input_size=64, pooling=pooling).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f = model.feature_map(x)
        expected = f.amax(dim=(2, 3)) if pooling == "max" else f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        assert torch.allclose(model.pooled(x), expected, atol=1e-6)
        assert (model.pooled(x) >= f.mean(dim=(2, 3)) - 1e-5).all()  # both weigh the strongest cells up
    path = export_onnx(model, tmp_path / "m.onnx", input_size=64, features=True, fp16=False)
    assert check_parity(model, path, x.numpy(), fp16=False).max_abs_logit_diff < 1e-4  # raises beyond tolerance


def test_manifest_refuses_a_bad_calibration():
    good = Manifest(version="v", sha256="0" * 64, output=Output(calibration=(2.0, -1.0)))
    assert Manifest.from_dict(json.loads(json.dumps(good.to_dict()))).output.calibration == (2.0, -1.0)
    for bad, message in (((-1.0, 0.0), "scale must be > 0"), ((float("nan"), 0.0), "two finite numbers")):
        data = good.to_dict()
        data["output"]["calibration"] = list(bad)
        with pytest.raises(ManifestError, match=message):
            Manifest.from_dict(data)
    # Schema 2 added the fields: version 1 manifests are still read, without them; unknown versions are refused.
    old = good.to_dict()
    old["schema_version"] = 1
    del old["output"]["calibration"], old["output"]["anomaly_map"]
    assert Manifest.from_dict(old).output.calibration is None
    with pytest.raises(ManifestError, match="schema_version 1 manifest cannot carry"):
        Manifest.from_dict({**good.to_dict(), "schema_version": 1})
    from qc_contract.model_manifest import SCHEMA_VERSION

    with pytest.raises(ManifestError, match=f"unsupported manifest schema_version {SCHEMA_VERSION + 1}"):
        Manifest.from_dict({**good.to_dict(), "schema_version": SCHEMA_VERSION + 1})


def test_manifest_carries_proposed_decision_bands_and_refuses_bad_ones():
    good = Manifest(version="v", sha256="0" * 64, decision_bands=DecisionBands(0.12, 0.7, True, "validation"))
    assert Manifest.from_dict(json.loads(json.dumps(good.to_dict()))).decision_bands == good.decision_bands
    for bad in ((0.7, 0.12), (0.0, 0.5), (0.3, 1.2), (-0.1, 0.5), (float("nan"), 0.5), (0.5, 0.5)):
        data = good.to_dict()
        data["decision_bands"].update(reinspect=bad[0], defective=bad[1])
        with pytest.raises(ManifestError, match="decision_bands must satisfy 0 < reinspect < defective <= 1"):
            Manifest.from_dict(data)
    # Schema 3 added them: an older manifest cannot carry them (an older edge refuses the new one by its version).
    with pytest.raises(ManifestError, match="schema_version 2 manifest cannot carry decision_bands"):
        Manifest.from_dict({**good.to_dict(), "schema_version": 2})
    assert Manifest.from_dict({**good.to_dict(), "schema_version": 2, "decision_bands": None}).decision_bands is None


# -- end to end: calibration round trip, anomaly model through the cell -----------------------------------


@pytest.fixture(scope="module")
def bottles(tmp_path_factory):
    return mvtec_dataset(tmp_path_factory.mktemp("bottles") / "data", n_train_good=14, n_test_good=6, n_per_defect=3)


def _edge_model(package):
    manifest = Manifest.load(package)
    backend = create_backend("onnxruntime", package / manifest.model_file, manifest, BackendOptions(max_batch=4))
    return LoadedModel(package, manifest, backend), manifest


@pytest.mark.slow
def test_calibration_round_trip_training_to_edge(bottles, tmp_path):
    out = tmp_path / "pkg"
    args = ["train", "--data", str(bottles), "--out", str(out), "--phase1-epochs", "3", "--phase2-epochs", "1"]
    assert main([*args, "--budget-minutes", "0.001", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [h["phase"] for h in report["history"]].count(2) == 1  # the budget ends Phase II after its first epoch
    cal = report["calibration"]
    model, manifest = _edge_model(out)
    assert manifest.output.calibration is not None and tuple(cal["scale_shift"]) == manifest.output.calibration
    assert {"test_ece_before", "test_ece_after", "proposed_bands", "reliability_after"} <= set(cal)
    assert "plots/reliability.png" in (out / "report.md").read_text()
    assert manifest.metrics["proposed_bands"]["target_escape"] == 0.01
    proposed = cal["proposed_bands"]  # the manifest carries them for the cell (decision bands: from_model)
    if proposed["low"] is not None:
        bands = manifest.decision_bands
        assert (bands.reinspect, bands.defective) == (proposed["low"], proposed["high"])
        assert bands.feasible == proposed["feasible"]
    assert "6/6" in model.self_test()  # golden scores were written calibrated; the edge reproduces them
    # Every test image: the cell's probability == the training tool's (both calibrated), == the report's score.
    scorer, _ = OnnxScorer.from_package(out)
    rows = report["test_images"]
    batch = np.stack(
        [preprocess(read_image(bottles / r["path"]), manifest.preprocessing, IMAGE_CHANNEL_ORDER)[0] for r in rows]
    )
    edge = np.concatenate([model.score(batch[i : i + 4]).probabilities for i in range(0, len(batch), 4)])
    np.testing.assert_allclose(edge, scorer(batch), atol=1e-5)
    np.testing.assert_allclose(edge, [r["score"] for r in rows], atol=1e-5)
    raw = 1 / (1 + np.exp(-scorer.logits(batch)))
    assert np.abs(raw - edge).max() > 1e-3  # the calibration really changes the probabilities


@pytest.mark.slow
def test_anomaly_model_good_parts_only_exports_and_runs_through_the_cell(bottles, tmp_path):
    out = tmp_path / "anomaly"
    assert main(["train", "--data", str(bottles), "--out", str(out), "--method", "anomaly", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    anomaly = report["model"]["anomaly"]
    assert anomaly["parity"]["max_rel_score_diff"] < 1e-3 and anomaly["parity"]["max_abs_map_diff"] < 1e-3
    assert anomaly["image_auroc"] >= 0.7 and anomaly["pixel_auroc"] is not None  # 64 px, 9 test images: wiring
    assert anomaly["bank"] <= anomaly["patches"]
    model, manifest = _edge_model(out)
    assert manifest.output.anomaly_map == "anomaly_map" and manifest.output.calibration is not None
    assert "6/6" in model.self_test() and model.has_heatmap
    dataset = load_dataset(bottles, progress=False)
    defect = next(s for s in dataset.samples if s.is_defect and s.path.startswith("test/"))
    image = read_image(bottles / defect.path)
    x = preprocess(image, manifest.preprocessing, IMAGE_CHANNEL_ORDER)
    scores = model.score(x, want_features=True)
    heat = model.heatmap(scores.features[0])
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1
    assert 0 <= scores.probabilities[0] <= 1
    picture = render(image, "BGR", True, float(scores.probabilities[0]), manifest.version, manifest.preprocessing, heat)
    assert picture.shape == image.shape and np.abs(picture.astype(int) - image.astype(int)).max() > 0


def test_good_parts_only_data_set_trains_the_anomaly_model_and_reports_honestly(bottles, tmp_path):
    """A new line with no defect images: the classifier refuses the data set (and names the anomaly model), the
    anomaly model trains, maps its score on held-out good parts, and reports the false-alarm load on good parts,
    never an AUROC or escape rate it cannot measure."""
    import shutil

    good = tmp_path / "line" / "good"
    good.mkdir(parents=True)
    for i, path in enumerate(sorted(bottles.glob("*/good/*.png"))):
        shutil.copy(path, good / f"{i:03d}.png")
    with pytest.raises(DatasetError, match="--method anomaly"):
        load_dataset(good.parent, progress=False)
    assert main(["train", "--data", str(good.parent), "--out", str(tmp_path / "clf"), *TINY]) == 2
    out = tmp_path / "anomaly"
    assert main(["train", "--data", str(good.parent), "--out", str(out), "--method", "anomaly", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    split = report["dataset"]["split"]
    assert all(counts.get("good", 0) > 0 and set(counts) == {"good"} for counts in split.values())
    test, parts = report["test"], report["good_parts"]
    assert test["n_defective"] == 0 and test["good_only"] is True
    assert test["roc_auc"] is None and test["f1"] is None and test["bands"]["defect_escape_rate"] is None
    assert report["model"]["anomaly"]["image_auroc"] is None and report["model"]["anomaly"]["pixel_auroc"] is None
    assert parts["no_defects"] and parts["n_val_good"] == split["val"]["good"]
    assert parts["n_test_good"] == split["test"]["good"] == test["n_good"]
    assert parts["expected_good_at_or_above_0.5"] == pytest.approx(1 / (parts["n_val_good"] + 1))
    assert 0.0 <= parts["test_good_reinspect_or_worse"] <= 1.0
    assert any("No defective images" in c for c in report["caveats"])
    assert "roc" not in report["plots"] and "score_histogram" in report["plots"]
    markdown = (out / "report.md").read_text()
    assert "no defective images" in markdown and "false alarms" in markdown
    model, manifest = _edge_model(out)
    assert manifest.output.calibration is not None and manifest.metrics["roc_auc"] is None
    assert "/" in model.self_test()


@pytest.mark.slow
def test_two_processes_under_torchrun_train_as_well_as_one(bottles, tmp_path):
    """The same `qc_cloud train` under torchrun with two CPU processes (gloo): Phase I is identical to one
    process (sharded feature cache, summed), Phase II runs DistributedDataParallel, rank 0 writes the package."""
    import os
    import subprocess
    import sys

    common = [
        "train", "--data", str(bottles), "--phase1-epochs", "4", "--phase2-epochs", "2", "--budget-minutes", "0",
        "--input-size", "64", "--no-progress", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = {}
    for name, prefix in (("one", [sys.executable]), ("two", launcher)):
        out = tmp_path / name
        done = subprocess.run(
            [*prefix, "-m", "qc_cloud.cli", *common, "--out", str(out)], env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((out / "report.json").read_text())
    one, two = runs["one"], runs["two"]
    assert two["training"]["processes"] == 2 and one["training"]["processes"] == 1
    phase1 = [[h["val_loss"] for h in r["history"] if h["phase"] == 1] for r in (one, two)]
    np.testing.assert_allclose(phase1[0], phase1[1], rtol=1e-4)  # the sharded cache is the same cache
    assert len([h for h in two["history"] if h["phase"] == 2]) >= 1
    lrs = [h["lr"] for h in two["history"] if h["phase"] == 2]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(2e-4)  # warm-up, then the full rate
    # Phase II differs only by the order of floating-point sums and dropout draws: the same quality. (On 9 test
    # images one part is 0.11 of accuracy, so the test compares ranking and the best validation loss.)
    assert abs(one["test"]["roc_auc"] - two["test"]["roc_auc"]) <= 0.2
    assert two["training"]["best"]["val_loss"] == pytest.approx(one["training"]["best"]["val_loss"], rel=0.25)
