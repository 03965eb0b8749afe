"""ONNX export of the classifier (opset 17, dynamic batch) and its parity check against PyTorch.

Graph contract (read by the edge through the manifest):
    input    "input"     float32 (N, 3, H, W), already preprocessed (qc_contract.preprocess)
    output   "logit"     float32 (N, 1), P(defect) = sigmoid(logit)
    output   "features"  float32 (N, C, h, w), last feature map, optional: class-activation heatmaps are
                         sum_c classifier_weights[c] * features[:, c] (the manifest carries the weights)

fp16: weights and arithmetic in half precision, inputs and outputs still float32 (casts inside the graph),
so the edge feeds the same tensors; half the file size. (TensorRT builds fp16 engines from the fp32 file
too: see scripts/build_trt_engine.sh --fp16.)

The TorchScript-based exporter (dynamo=False) is used: it writes opset 17 directly and a single file; the
dynamo exporter in torch 2.13 only emits opset >= 18 and external weight files.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from qc_cloud.training.errors import ExportError
from qc_cloud.training.evaluate import OnnxScorer, sigmoid
from qc_cloud.training.models import DefectClassifier

OPSET = 17
INPUT_NAME = "input"
LOGIT_NAME = "logit"
FEATURES_NAME = "features"
# Parity limits between PyTorch (fp32) and ONNX Runtime: logits and probabilities.
FP32_TOLERANCE = (1e-3, 1e-4)
FP16_TOLERANCE = (0.1, 0.01)


class _ExportGraph(nn.Module):
    def __init__(self, model: DefectClassifier, features: bool, fp16: bool) -> None:
        super().__init__()
        self.model, self.features, self.fp16 = model, features, fp16

    def forward(self, x: torch.Tensor):
        if self.fp16:
            x = x.half()
        fmap = self.model.feature_map(x)
        logit = self.model.head(fmap.mean(dim=(2, 3)))  # dropout is the identity in inference
        if self.fp16:
            logit, fmap = logit.float(), fmap.float()
        return (logit, fmap) if self.features else logit


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    tolerance_logit: float
    tolerance_prob: float

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def export_onnx(
    model: DefectClassifier, path: Path, *, input_size: int, features: bool = True, fp16: bool = False
) -> Path:
    """Write the model as ONNX; checks the file with onnx.checker. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = copy.deepcopy(model).eval()
    if fp16:
        source = source.half()
    graph = _ExportGraph(source, features, fp16).eval()
    outputs = [LOGIT_NAME, FEATURES_NAME] if features else [LOGIT_NAME]
    example = torch.zeros(2, 3, input_size, input_size)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        )
    proto = onnx.load(str(tmp))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exported ONNX model is invalid: {exc}") from exc
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exported ONNX model has opset {opsets}, {OPSET} required")
    tmp.replace(path)
    return path


def check_parity(model: DefectClassifier, onnx_path: Path, inputs: np.ndarray, *, fp16: bool = False) -> ParityReport:
    """Run PyTorch and ONNX Runtime on `inputs` (real preprocessed images), as one batch and as single images
    (the batch axis is dynamic); raise ExportError when they differ beyond tolerance."""
    tol_logit, tol_prob = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    scorer = OnnxScorer(onnx_path)
    model.eval()
    with torch.inference_mode():
        reference = model(torch.from_numpy(inputs)).reshape(-1).numpy().astype(np.float64)
    batch = scorer.logits(inputs).astype(np.float64)
    singles = np.concatenate([scorer.logits(inputs[i : i + 1]) for i in range(min(len(inputs), 3))]).astype(np.float64)
    logit_diff = max(np.abs(batch - reference).max(), np.abs(singles - reference[: len(singles)]).max())
    prob_diff = float(np.abs(sigmoid(batch) - sigmoid(reference)).max())
    report = ParityReport((len(inputs), 1), float(logit_diff), prob_diff, tol_logit, tol_prob)
    if not (logit_diff <= tol_logit and prob_diff <= tol_prob) or not np.isfinite(batch).all():
        raise ExportError(
            f"ONNX Runtime output differs from PyTorch: max |logit diff| {logit_diff:.2e} (limit {tol_logit}), "
            f"max |P diff| {prob_diff:.2e} (limit {tol_prob})"
        )
    return report
