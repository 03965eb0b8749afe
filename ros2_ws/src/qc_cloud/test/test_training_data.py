"""Data layer of the training tools: layouts, labels, image reading, bad inputs, the stratified split and
augmentation. Plain pytest, no model."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
from training_data import draw_part, generic_dataset, mvtec_dataset

from qc_cloud.training.augment import NO_AUGMENTATION, Augmentation, draw_rng
from qc_cloud.training.datasets import load_dataset, read_image
from qc_cloud.training.errors import DatasetError
from qc_cloud.training.splits import MVTEC_CAVEAT, Split, stratified_split

# -- layouts ----------------------------------------------------------------------------------------------


def test_mvtec_layout_pools_train_and_test_and_labels_by_folder(tmp_path):
    root = mvtec_dataset(tmp_path / "mv", n_train_good=5, n_test_good=3, n_per_defect=2)
    ds = load_dataset(root, progress=False)
    assert ds.layout == "mvtec"
    assert ds.counts() == {"broken_large": 2, "broken_small": 2, "contamination": 2, "good": 8, "scratch": 2}
    assert all(s.label == (s.defect_type != "good") for s in ds.samples)
    assert not any(s.path.startswith("ground_truth") for s in ds.samples), "masks are not images to classify"
    assert {s.path.split("/")[0] for s in ds.samples} == {"train", "test"}


def test_generic_layout_nested_defect_types_grayscale_and_jpeg(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=6, n_per_defect=3, nested=True)
    ds = load_dataset(root, progress=False)
    assert ds.layout == "generic"
    assert ds.counts() == {"bar": 3, "blob": 3, "good": 6}
    assert any(s.path.endswith(".jpg") for s in ds.samples)
    gray = next(s for s in ds.samples if s.path == "good/g000.png")
    assert cv2.imread(str(root / gray.path), cv2.IMREAD_UNCHANGED).ndim == 2, "fixture must hold a grayscale file"
    image = ds.image(gray)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])


def test_generic_layout_one_folder_per_class(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=4, n_per_defect=2, nested=False)
    (root / "ok").mkdir()
    cv2.imwrite(str(root / "ok" / "x.png"), draw_part(np.random.default_rng(1), 32, None))
    ds = load_dataset(root, progress=False)
    assert ds.counts() == {"bar": 2, "blob": 2, "good": 5}, "ok/ counts as good, other folders are defect types"


def test_sixteen_bit_images_are_scaled_to_eight_bit(tmp_path):
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((8, 8), 0xABCD, dtype=np.uint16))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3) and int(image[0, 0, 0]) == 0xAB


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=4, n_per_defect=2)
    first = load_dataset(root, progress=False).fingerprint
    assert load_dataset(root, progress=False).fingerprint == first
    cv2.imwrite(str(root / "good" / "g001.png"), np.zeros((64, 64, 3), np.uint8))
    assert load_dataset(root, progress=False).fingerprint != first


# -- bad data sets ----------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", progress=False)


def test_empty_data_set(tmp_path):
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path, progress=False)


def test_one_class_data_set(tmp_path):
    root = mvtec_dataset(tmp_path / "mv", n_train_good=3, n_test_good=2, n_per_defect=0)
    with pytest.raises(DatasetError, match="only good images"):
        load_dataset(root, progress=False)


def test_unreadable_images_are_all_named(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=4, n_per_defect=2)
    (root / "good" / "broken.png").write_bytes(b"not a png at all")
    (root / "defect" / "bar" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"2 unreadable image\(s\)") as info:
        load_dataset(root, progress=False)
    assert "broken.png" in str(info.value) and "empty.jpg" in str(info.value)


def test_unlabelled_images_in_root(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=4, n_per_defect=2)
    cv2.imwrite(str(root / "loose.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="no label"):
        load_dataset(root, progress=False)


def test_mvtec_without_train_good(tmp_path):
    (tmp_path / "train" / "bad").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match="no train/good"):
        load_dataset(tmp_path, progress=False)


# -- split ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = mvtec_dataset(tmp_path_factory.mktemp("split") / "mv", n_train_good=14, n_test_good=6, n_per_defect=8)
    return load_dataset(root, progress=False)


def test_split_is_stratified_by_defect_type(mvtec):
    split = stratified_split(mvtec, val_fraction=0.25, test_fraction=0.25, seed=3)
    counts = split.counts(mvtec)
    for defect_type, n in mvtec.counts().items():
        per_split = [counts[name].get(defect_type, 0) for name in ("train", "val", "test")]
        assert sum(per_split) == n
        assert per_split == [n - 2 * round(n / 4), round(n / 4), round(n / 4)], defect_type
    assert sorted(split.assignment) == sorted(s.path for s in mvtec.samples)


def test_split_is_reproducible_and_depends_on_the_seed(mvtec):
    a = stratified_split(mvtec, seed=1)
    assert stratified_split(mvtec, seed=1).assignment == a.assignment
    assert stratified_split(mvtec, seed=2).assignment != a.assignment


def test_split_round_trip_and_mvtec_caveat(mvtec, tmp_path):
    split = stratified_split(mvtec, seed=0)
    path = split.save(tmp_path / "split.json", mvtec)
    data = json.loads(path.read_text())
    assert data["caveat"] == MVTEC_CAVEAT
    assert Counter(i["split"] for i in data["items"]) == Counter(split.assignment.values())
    loaded = Split.load(path)
    loaded.check_matches(mvtec)
    assert loaded.assignment == split.assignment


def test_split_that_does_not_match_the_data_set(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=6, n_per_defect=3)
    ds = load_dataset(root, progress=False)
    split = stratified_split(ds, seed=0)
    (root / "good" / "g005.png").unlink()
    with pytest.raises(DatasetError, match="1 recorded image"):
        split.check_matches(load_dataset(root, progress=False))
    cv2.imwrite(str(root / "good" / "g005.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match="different content"):
        split.check_matches(load_dataset(root, progress=False))


def test_split_with_too_few_defects(tmp_path):
    root = generic_dataset(tmp_path / "gen", n_good=10, n_per_defect=1)
    with pytest.raises(DatasetError, match="lack defective images"):
        stratified_split(load_dataset(root, progress=False))


def test_malformed_split_file(tmp_path):
    (tmp_path / "split.json").write_text('{"format": "something else"}')
    with pytest.raises(DatasetError, match="not a split file"):
        Split.load(tmp_path / "split.json")


# -- augmentation -----------------------------------------------------------------------------------------


def test_augmentation_is_deterministic_per_draw_and_keeps_shape():
    image = draw_part(np.random.default_rng(0), 48, "bar")
    aug = Augmentation()
    a, b = aug.apply(image, draw_rng(0, 5, 1)), aug.apply(image, draw_rng(0, 5, 1))
    assert np.array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert not np.array_equal(aug.apply(image, draw_rng(0, 5, 2)), a), "another draw gives another image"


def test_flip_only_mirrors_and_brightness_stays_in_range():
    image = np.zeros((9, 12, 3), np.uint8)
    image[:, :3] = 200  # bright left edge
    only = {"vflip": False, "rot90": False, "contrast": 0.0, "blur_sigma": 0.0, "noise_std": 0.0}
    flip = Augmentation(rotation_deg=0, zoom=0, hflip=True, brightness=(1.0, 1.0), **only)
    outcomes = {bool(flip.apply(image, draw_rng(0, 0, d))[:, -1].mean() > 100) for d in range(20)}
    assert outcomes == {True, False}, "about half the draws mirror the image"
    mirrored = next(
        flip.apply(image, draw_rng(0, 0, d)) for d in range(20) if flip.apply(image, draw_rng(0, 0, d))[0, -1, 0]
    )
    assert np.array_equal(mirrored, image[:, ::-1])
    bright = Augmentation(rotation_deg=0, zoom=0, hflip=False, brightness=(0.8, 1.2), **only)
    flat = np.full((4, 4, 3), 100, np.uint8)
    values = [int(bright.apply(flat, draw_rng(0, 0, d))[0, 0, 0]) for d in range(30)]
    assert 80 <= min(values) < 95 and 105 < max(values) <= 120


def test_no_augmentation_is_identity():
    assert NO_AUGMENTATION.is_identity and not Augmentation().is_identity
    with pytest.raises(ValueError):
        Augmentation(zoom=1.5)
