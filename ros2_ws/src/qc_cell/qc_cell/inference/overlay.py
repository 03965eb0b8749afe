"""The operator's picture of a part (inspection/overlay): the image with a border in the verdict colour,
the score, and where the model exports its last feature map, a class-activation heatmap showing where it
sees the defect. The thresholds here only colour the picture; the verdict itself is the decision node's."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from qc_contract.model_manifest import Preprocessing
from qc_contract.preprocess import BAYER_CODES, demosaic

GREEN, AMBER, RED, GREY = (60, 180, 75), (0, 165, 255), (40, 40, 220), (150, 150, 150)  # BGR


@dataclass(frozen=True)
class OverlayStyle:
    reinspect_threshold: float = 0.5
    defective_threshold: float = 0.8
    max_side: int = 640  # overlays are for viewers: larger frames are scaled down before drawing
    heatmap_alpha: float = 0.45


def _small_demosaic(mosaic: np.ndarray, layout: str, scale: float) -> np.ndarray:
    """BGR of a Bayer mosaic reduced by whole 2x2 cells to about `scale` (viewers only: never at full size)."""
    if mosaic.dtype == np.uint16:
        mosaic = (mosaic >> 8).astype(np.uint8)
    k = max(1, int(1.0 / scale)) if scale < 1.0 else 1
    h, w = mosaic.shape[0] // 2, mosaic.shape[1] // 2
    cells = mosaic[: 2 * h, : 2 * w].reshape(h, 2, w, 2)[::k, :, ::k, :]
    return demosaic(np.ascontiguousarray(cells).reshape(2 * cells.shape[0], 2 * cells.shape[2]), layout)


def _to_bgr8(image: np.ndarray, channel_order: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if channel_order == "RGB" else image)


def _heatmap_on_image(
    cam: np.ndarray, image_hw: tuple[int, int], spec: Preprocessing, out_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Map a CAM over the model input back onto the image (undoing letterbox and ROI); 0 outside. out_hw: the
    size of the picture drawn on, when it is the image scaled down (the ROI is scaled with it)."""
    out_hw = out_hw or image_hw
    full = np.zeros(out_hw, dtype=np.float32)
    x, y, w, h = spec.roi if spec.roi is not None else (0, 0, image_hw[1], image_hw[0])
    canvas = cv2.resize(cam, (spec.input_width, spec.input_height), interpolation=cv2.INTER_LINEAR)
    if spec.letterbox:
        scale = min(spec.input_width / w, spec.input_height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        top, left = (spec.input_height - nh) // 2, (spec.input_width - nw) // 2
        canvas = canvas[top : top + nh, left : left + nw]
    sy, sx = out_hw[0] / image_hw[0], out_hw[1] / image_hw[1]
    x0, y0 = min(round(x * sx), out_hw[1] - 1), min(round(y * sy), out_hw[0] - 1)
    x1, y1 = max(x0 + 1, min(round((x + w) * sx), out_hw[1])), max(y0 + 1, min(round((y + h) * sy), out_hw[0]))
    full[y0:y1, x0:x1] = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return full


def heatmap_image(
    heatmap: np.ndarray, image_hw: tuple[int, int], spec: Preprocessing, max_side: int = 256
) -> np.ndarray:
    """The CAM mapped onto the image (letterbox and ROI undone) as greyscale uint8, scaled so the longer side is
    at most max_side: what the cloud bridge sends with a sample (inspection/heatmap)."""
    scale = min(1.0, max_side / max(image_hw))
    out_hw = (max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale)))
    cam = _heatmap_on_image(heatmap, image_hw, spec, out_hw)
    return (np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)


def render(
    image: np.ndarray,
    channel_order: str,
    ok: bool,
    probability: float,
    label: str,
    spec: Preprocessing | None = None,
    heatmap: np.ndarray | None = None,
    style: OverlayStyle = OverlayStyle(),
) -> np.ndarray:
    """BGR8 overlay image. label: e.g. the model version, or the NOT_INSPECTED reason.
    The image is scaled down to max_side first, so the cost stays bounded at megapixel sizes (a 12 MP frame
    is read once by the resize, never converted or blended at full size)."""
    image_hw = image.shape[:2]
    scale = style.max_side / max(image_hw)
    if channel_order in BAYER_CODES:  # a raw mosaic: every k-th 2x2 cell, demosaiced (small), then as BGR
        image, channel_order = _small_demosaic(image, channel_order, scale), "BGR"
        scale = style.max_side / max(image.shape[:2])
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR)
    bgr = _to_bgr8(image, channel_order)
    if heatmap is not None and spec is not None and ok:
        cam = _heatmap_on_image(heatmap, image_hw, spec, bgr.shape[:2])
        colour = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
        weight = (style.heatmap_alpha * cam)[:, :, np.newaxis]
        bgr = (bgr * (1.0 - weight) + colour * weight).astype(np.uint8)
    if bgr.base is not None or not bgr.flags.writeable or np.shares_memory(bgr, image):
        bgr = bgr.copy()  # never draw on the caller's frame
    if not ok:
        colour, text = GREY, f"NOT INSPECTED: {label}"
    elif probability >= style.defective_threshold:
        colour, text = RED, f"DEFECTIVE p={probability:.2f}  {label}"
    elif probability >= style.reinspect_threshold:
        colour, text = AMBER, f"RE-INSPECT p={probability:.2f}  {label}"
    else:
        colour, text = GREEN, f"NORMAL p={probability:.2f}  {label}"
    thickness = max(2, min(bgr.shape[:2]) // 40)
    cv2.rectangle(bgr, (0, 0), (bgr.shape[1] - 1, bgr.shape[0] - 1), colour, thickness)
    font_scale = max(0.35, min(bgr.shape[:2]) / 600)
    org = (thickness + 4, thickness + int(22 * font_scale / 0.6))
    cv2.putText(bgr, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(bgr, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, 1, cv2.LINE_AA)
    return bgr
