"""Tiny classifiers with known weights, built with the ONNX helper API, and model packages around them.

For tests, benchmarks and demos where no trained model exists. The brightness classifier's score is an
exact function of the preprocessed image, so expected scores are computed here in NumPy, independently of
any backend:  logit = gain * mean(input tensor) + bias  (plus a "features" map for CAM heatmaps).
Requires the `onnx` package (a dev/cloud dependency; the edge only needs it to build test packages).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from qc_contract.model_manifest import GoldenItem, Manifest, Output, Preprocessing, sha256_file
from qc_contract.preprocess import preprocess

KINDS = ("brightness", "nan_when_dark", "softmax", "probability")
OPSET = 17
IR_VERSION = 8  # readable by ONNX Runtime >= 1.10 and TensorRT 8.6's parser


def build_classifier(
    kind: str = "brightness",
    input_hw: tuple[int, int] = (32, 32),
    gain: float = 2.0,
    bias: float = 0.0,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logit",
    features_name: str | None = "features",
) -> bytes:
    """A serialized ONNX model: input (N, 3, H, W) float32.

    features = Relu(Conv1x1(x)) with channels [mean_c x, -mean_c x, x_0, x_2]  (N, 4, H, W)
    z = gain * (GAP(f0) - GAP(f1)) + bias  = gain * mean(x) + bias
    kind: brightness -> output z (a sigmoid logit); nan_when_dark -> log(mean(x) + 1) (NaN for dark images);
    softmax -> (N, 2) logits [-z/2, z/2]; probability -> sigmoid(z).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    h, w = input_hw
    batch: int | str = "batch" if dynamic_batch else 1
    third = 1.0 / 3.0
    conv_w = np.array(
        [[third, third, third], [-third, -third, -third], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32
    ).reshape(4, 3, 1, 1)
    inits = [numpy_helper.from_array(conv_w, "conv_w")]
    nodes = [
        helper.make_node("Conv", [input_name, "conv_w"], ["conv"]),
        helper.make_node("Relu", ["conv"], [features_name or "relu"]),
        helper.make_node("GlobalAveragePool", [features_name or "relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
    ]
    out_width = 2 if kind == "softmax" else 1
    if kind == "nan_when_dark":
        head = np.array([[1.0], [-1.0], [0.0], [0.0]], dtype=np.float32)  # pooled @ head = mean(x)
        inits += [numpy_helper.from_array(head, "head_w"), numpy_helper.from_array(np.float32([1.0]), "one")]
        nodes += [
            helper.make_node("MatMul", ["pooled", "head_w"], ["mean"]),
            helper.make_node("Add", ["mean", "one"], ["shifted"]),
            helper.make_node("Log", ["shifted"], [output_name]),
        ]
    else:
        if kind == "softmax":
            head = np.array([[-gain / 2, gain / 2], [gain / 2, -gain / 2], [0, 0], [0, 0]], dtype=np.float32)
            head_b = np.array([-bias / 2, bias / 2], dtype=np.float32)
        else:
            head = np.array([[gain], [-gain], [0.0], [0.0]], dtype=np.float32)
            head_b = np.array([bias], dtype=np.float32)
        inits += [numpy_helper.from_array(head, "head_w"), numpy_helper.from_array(head_b, "head_b")]
        z_name = "z" if kind == "probability" else output_name
        nodes.append(helper.make_node("Gemm", ["pooled", "head_w", "head_b"], [z_name]))
        if kind == "probability":
            nodes.append(helper.make_node("Sigmoid", ["z"], [output_name]))
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, out_width])]
    if features_name:
        outputs.append(helper.make_tensor_value_info(features_name, TensorProto.FLOAT, [batch, 4, h, w]))
    graph = helper.make_graph(
        nodes,
        f"qc_{kind}_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, h, w])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qc_cell")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def expected_probability(
    image: np.ndarray,
    spec: Preprocessing,
    kind: str = "brightness",
    gain: float = 2.0,
    bias: float = 0.0,
    channel_order: str = "BGR",
) -> float:
    """What the classifier built with these settings must output for `image` (NaN where it gives NaN)."""
    mean = float(preprocess(image, spec, channel_order).astype(np.float64).mean())
    if kind == "nan_when_dark":
        return float(1.0 / (1.0 + 1.0 / (mean + 1.0))) if mean + 1.0 > 0 else float("nan")  # sigmoid(log(m + 1))
    return float(1.0 / (1.0 + np.exp(-(gain * mean + bias))))


def uniform_image(level: int, height: int = 48, width: int = 64, channels: int = 3) -> np.ndarray:
    """A flat BGR (or grey) image: level 0 = dark (scores low), 255 = bright (scores high)."""
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.full(shape, level, dtype=np.uint8)


def write_package(
    directory: Path,
    version: str,
    kind: str = "brightness",
    input_hw: tuple[int, int] = (32, 32),
    gain: float = 2.0,
    bias: float = 0.0,
    golden_levels: Sequence[int] = (40, 200),
    golden_tolerance: float = 0.02,
    features: bool = True,
    dynamic_batch: bool = True,
    manifest_overrides: dict | None = None,
) -> Manifest:
    """Write a complete model package (manifest.json, model.onnx, golden/*.png) and return its manifest.
    Golden scores are computed in NumPy from the known weights (not by running a backend)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "golden").mkdir(parents=True)
    model = build_classifier(kind, input_hw, gain, bias, dynamic_batch, features_name="features" if features else None)
    (directory / "model.onnx").write_bytes(model)
    spec = Preprocessing(input_height=input_hw[0], input_width=input_hw[1])
    golden = []
    for level in golden_levels:
        image = uniform_image(level)
        name = f"golden/level_{level:03d}.png"
        cv2.imwrite(str(directory / name), image)
        golden.append(GoldenItem(file=name, score=round(expected_probability(image, spec, kind, gain, bias), 6)))
    output = Output(
        name="logit",
        semantics={"softmax": "softmax", "probability": "probability"}.get(kind, "sigmoid_logit"),
        defect_index=1,
        features="features" if features else None,
        classifier_weights=(gain, -gain, 0.0, 0.0) if features and kind in ("brightness", "probability") else None,
    )
    manifest = Manifest(
        version=version,
        sha256=sha256_file(directory / "model.onnx"),
        size_bytes=len(model),
        architecture=f"synthetic_{kind}",
        preprocessing=spec,
        output=output,
        golden=tuple(golden),
        golden_tolerance=golden_tolerance,
        metrics={"note": "synthetic test model with known weights"},
    )
    if manifest_overrides:
        manifest = replace(manifest, **manifest_overrides)
    manifest.write(directory)
    return manifest
