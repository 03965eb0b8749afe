"""The synthetic part generator: determinism, defect rate, masks that match labels, learnable defects,
and the MVTec-AD layout written by write_mvtec_dataset and the qc_synthetic_parts CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from qc_cell.camera.synthetic_cli import main as cli_main
from qc_contract.synthetic import DEFECT_TYPES, SyntheticPart, SyntheticPartGenerator, write_mvtec_dataset


def _same(a: SyntheticPart, b: SyntheticPart) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.mask, b.mask)
        and (a.label, a.defect_type) == (b.label, b.defect_type)
    )


def test_part_is_a_bgr_image_with_a_matching_mask():
    part = SyntheticPartGenerator(seed=3, width=320, height=240).part(0)
    assert part.image.shape == (240, 320, 3) and part.image.dtype == np.uint8
    assert part.mask.shape == (240, 320) and part.mask.dtype == np.uint8
    # A dark background and a bright glass rim, as in MVTec AD 'bottle'.
    gray = cv2.cvtColor(part.image, cv2.COLOR_BGR2GRAY)
    assert gray[:8, :8].mean() < 40, "corner should be dark background"
    assert gray.max() > 150, "the rim should be bright"


def test_same_seed_and_index_give_the_same_part_in_any_order():
    first = SyntheticPartGenerator(seed=7, width=128, height=128, defect_rate=0.5)
    second = SyntheticPartGenerator(seed=7, width=128, height=128, defect_rate=0.5)
    forward = [first.part(i) for i in range(6)]
    backward = [second.part(i) for i in reversed(range(6))][::-1]
    assert all(_same(a, b) for a, b in zip(forward, backward, strict=True))


def test_different_seeds_and_indices_give_different_parts():
    a = SyntheticPartGenerator(seed=1, width=128, height=128).part_with(0, None)
    b = SyntheticPartGenerator(seed=2, width=128, height=128).part_with(0, None)
    c = SyntheticPartGenerator(seed=1, width=128, height=128).part_with(1, None)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_parts_vary_in_position_and_lighting():
    gen = SyntheticPartGenerator(seed=0, width=256, height=256)
    centroids, brightness = [], []
    for i in range(12):
        gray = cv2.cvtColor(gen.part_with(i, None).image, cv2.COLOR_BGR2GRAY)
        m = cv2.moments((gray > 60).astype(np.uint8))
        centroids.append((m["m10"] / m["m00"], m["m01"] / m["m00"]))
        brightness.append(gray.mean())
    xs, ys = zip(*centroids, strict=True)
    assert max(np.ptp(xs), np.ptp(ys)) > 2.0, f"bottle never moves: {centroids}"
    assert np.ptp(brightness) > 3.0, f"lighting never changes: {brightness}"


def test_defect_rate_is_respected():
    gen = SyntheticPartGenerator(seed=11, width=64, height=64, defect_rate=0.3)
    parts = [gen.part(i) for i in range(400)]
    defects = [p for p in parts if p.label == "defect"]
    # Binomial(400, 0.3): mean 120, sd 9.2; +-4 sd.
    assert 83 <= len(defects) <= 157, f"{len(defects)} defects in 400 parts at rate 0.3"
    assert {p.defect_type for p in defects} == set(DEFECT_TYPES)
    assert all(p.defect_type is None for p in parts if p.label == "good")


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_extreme_defect_rates(rate):
    gen = SyntheticPartGenerator(seed=5, width=64, height=64, defect_rate=rate, defect_types=("scratch",))
    labels = {gen.part(i).label for i in range(20)}
    assert labels == ({"good"} if rate == 0.0 else {"defect"})


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_mask_marks_exactly_where_the_defect_changed_the_part(defect_type):
    gen = SyntheticPartGenerator(seed=21, width=512, height=512)
    for index in range(3):
        good = gen.part_with(index, None)
        bad = gen.part_with(index, defect_type)
        assert good.label == "good" and good.defect_type is None and not good.mask.any()
        assert bad.label == "defect" and bad.defect_type == defect_type
        assert set(np.unique(bad.mask)) == {0, 255}
        diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16)).max(axis=2)
        # Same bottle, same noise: outside the (slightly widened) mask nothing changed.
        near = cv2.dilate(bad.mask, np.ones((9, 9), np.uint8)) > 0
        assert diff[~near].max() == 0, f"{defect_type}: image changed outside its mask"
        inside = diff[bad.mask > 0]
        assert inside.mean() > 12, f"{defect_type} #{index}: mean change {inside.mean():.1f} inside mask"


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defects_stay_visible_at_model_resolution(defect_type):
    """At 224 x 224 (EfficientNet-B0 input) every defect, also the subtle scratch, still changes pixels
    well above the sensor noise (sigma ~ 2-4 grey levels)."""
    gen = SyntheticPartGenerator(seed=4, width=512, height=512)
    for index in range(4):
        good = cv2.resize(gen.part_with(index, None).image, (224, 224), interpolation=cv2.INTER_AREA)
        bad = cv2.resize(gen.part_with(index, defect_type).image, (224, 224), interpolation=cv2.INTER_AREA)
        diff = np.abs(bad.astype(np.int16) - good.astype(np.int16)).max(axis=2)
        assert diff.max() >= 15, f"{defect_type} #{index}: strongest change {diff.max()} grey levels at 224 px"
        assert (diff >= 10).sum() >= 8, f"{defect_type} #{index}: only {(diff >= 10).sum()} changed pixels"


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="defect_rate"):
        SyntheticPartGenerator(defect_rate=1.5)
    with pytest.raises(ValueError, match="unknown defect types"):
        SyntheticPartGenerator(defect_types=("dent",))
    with pytest.raises(ValueError, match="seed"):
        SyntheticPartGenerator(seed=-1)
    with pytest.raises(ValueError, match="too small"):
        SyntheticPartGenerator(width=8)
    gen = SyntheticPartGenerator(width=64, height=64)
    with pytest.raises(ValueError, match="unknown defect type"):
        gen.part_with(0, "dent")
    with pytest.raises(ValueError, match=">= 0"):
        gen.part(-1)


def test_write_mvtec_dataset_layout(tmp_path):
    root = write_mvtec_dataset(
        tmp_path / "bottle",
        n_train_good=3,
        n_test_good=2,
        n_test_per_defect=2,
        width=96,
        height=80,
        seed=9,
        defect_types=("broken_small", "scratch"),
    )
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in (root / "test").iterdir()) == ["broken_small", "good", "scratch"]
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == ["broken_small", "scratch"]
    for defect in ("broken_small", "scratch"):
        images = sorted((root / "test" / defect).glob("*.png"))
        assert [p.name for p in images] == ["000.png", "001.png"]
        for image_path in images:
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(root / "ground_truth" / defect / f"{image_path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert image.shape == (80, 96, 3) and mask.shape == (80, 96)
            assert mask.max() == 255 and set(np.unique(mask)) <= {0, 255}
    # Every image is a different part.
    images = [cv2.imread(str(p)) for p in sorted(root.rglob("*.png")) if "ground_truth" not in p.parts]
    assert len(images) == 3 + 2 + 2 * 2
    assert len({img.tobytes() for img in images}) == len(images)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["seed"] == 9 and meta["defect_types"] == ["broken_small", "scratch"]


def test_write_mvtec_dataset_is_reproducible(tmp_path):
    kwargs = {"n_train_good": 2, "n_test_good": 1, "n_test_per_defect": 1, "width": 64, "height": 64, "seed": 2}
    a = write_mvtec_dataset(tmp_path / "a", **kwargs)
    b = write_mvtec_dataset(tmp_path / "b", **kwargs)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_cli_writes_a_data_set(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(
        ["--out", str(out), "--train-good", "2", "--test-good", "1", "--test-per-defect", "1", "--size", "64"]
    )
    assert code == 0
    assert len(list((out / "train" / "good").glob("*.png"))) == 2
    assert all(len(list((out / "ground_truth" / d).glob("*_mask.png"))) == 1 for d in DEFECT_TYPES)
    assert "wrote 7 images (64x64)" in capsys.readouterr().out


def test_cli_rejects_unknown_defect_types(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--out", str(tmp_path), "--defect-types", "scratch,dent"])
    assert exit_info.value.code == 2
    assert "unknown defect types ['dent']" in capsys.readouterr().err


def test_write_mvtec_dataset_crops_the_frames(tmp_path):
    """`crop` writes only a region of each rendered frame (and mask): the same pixels as the whole frame's."""
    kwargs = {"n_train_good": 1, "n_test_good": 1, "n_test_per_defect": 1, "width": 96, "height": 64, "seed": 4}
    whole = write_mvtec_dataset(tmp_path / "whole", **kwargs, defect_types=("scratch",))
    crop = write_mvtec_dataset(tmp_path / "crop", **kwargs, defect_types=("scratch",), crop=(16, 0, 64, 64))
    for name in ("train/good/000.png", "test/scratch/000.png", "ground_truth/scratch/000_mask.png"):
        full = cv2.imread(str(whole / name), cv2.IMREAD_UNCHANGED)
        part = cv2.imread(str(crop / name), cv2.IMREAD_UNCHANGED)
        assert part.shape[:2] == (64, 64) and np.array_equal(part, full[0:64, 16:80])
    assert json.loads((crop / "synthetic.json").read_text())["crop"] == [16, 0, 64, 64]
    assert "crop" not in json.loads((whole / "synthetic.json").read_text())
    with pytest.raises(ValueError, match="not inside"):
        write_mvtec_dataset(tmp_path / "bad", **kwargs, crop=(40, 0, 64, 64))
