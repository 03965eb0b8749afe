"""Verify requests as a cell's bridge writes them (the contract's own record builders), for the verifier tests."""

from __future__ import annotations

import base64
import time

import cv2
import numpy as np

from qc_contract import records
from qc_contract.vocabulary import Verdict

CELL = "plant1/line2/cell3"


def request_payload(
    seq: int,
    level: int = 200,
    *,
    cell: str = CELL,
    deadline_in_s: float | None = 5.0,
    size: tuple[int, int] = (64, 48),
    epoch: str = "0badc0de",
    image: np.ndarray | None = None,
) -> bytes:
    """A verify/request record of a uniform image (level 200 scores high on the brightness model, 40 low)."""
    if image is None:
        image = np.full((size[1], size[0], 3), level, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    now = time.time_ns()
    deadline = None if deadline_in_s is None else now + int(deadline_in_s * 1e9)
    body = records.image_record(
        part_id=f"cell3-{seq:08d}",
        verdict=int(Verdict.REINSPECT),
        defect_probability=0.6,
        reasons=["visual_reinspect"],
        model_version="edge-1",
        capture_ns=now - 20_000_000,
        width=image.shape[1],
        height=image.shape[0],
        jpeg_b64=base64.b64encode(jpeg.tobytes()).decode(),
        deadline_ns=deadline,
    )
    return records.encode(records.envelope(cell, epoch, "verify_request", seq, body))


def request_topic(cell: str = CELL) -> str:
    return f"qc/{cell}/verify/request"
