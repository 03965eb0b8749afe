"""Check a model's declared input against what the manifest promises (3 x H x W, any batch)."""

from __future__ import annotations

from collections.abc import Sequence

from qc_cell.inference.backends.base import BackendError


def _is_fixed(dim: object) -> bool:
    return isinstance(dim, int) and dim > 0


def resolve_max_batch(
    declared: Sequence[object], input_name: str, expected_chw: tuple[int, int, int], wanted_max_batch: int
) -> int:
    """Validate the declared input shape (dynamic dims as None/str/-1) and return the usable max batch.

    Raises BackendError when the model cannot take the manifest's input (wrong rank, channels or size):
    the classic "exported at 256x256, manifest says 224x224" mistake is caught at load, not per part.
    """
    if len(declared) != 4:
        raise BackendError(f"model input '{input_name}' has shape {list(declared)}; a 4-D NCHW input is expected")
    batch, *chw = declared
    for axis, (got, want) in enumerate(zip(chw, expected_chw, strict=True), start=1):
        if _is_fixed(got) and got != want:
            raise BackendError(
                f"model input '{input_name}' has shape {list(declared)} but the manifest says "
                f"(N, {expected_chw[0]}, {expected_chw[1]}, {expected_chw[2]}) (axis {axis}: {got} != {want})"
            )
    if batch == 1:
        return 1  # fixed batch 1: parts are scored one at a time whatever max_batch says
    if _is_fixed(batch):
        raise BackendError(
            f"model input '{input_name}' has a fixed batch of {batch}; export it with a dynamic batch axis or batch 1"
        )
    return wanted_max_batch
