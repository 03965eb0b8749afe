"""Synthetic parts from qc_contract.synthetic, with ground truth (the demo's and the system tests' camera)."""

from __future__ import annotations

import numpy as np

from qc_cell.camera.sources.base import Frame, FrameSource, SourceConfigError
from qc_contract.synthetic import SyntheticPart, SyntheticPartGenerator

# Large parts take far longer to render than a line's period (a 5 MP part ~0.3-1.8 s here, 1280x720 20-250 ms):
# above this size (VGA) the source renders CACHED_PARTS distinct parts once each and then cycles through them, so
# the cell and the benchmarks run at 1280x720 to 12 MP at 10-30 parts/s, and the rendering (no part of a real
# camera's cost) does not take the CPU the cell's own work needs. The origin names the part actually shown.
CACHE_ABOVE_PIXELS = 640 * 480
CACHED_PARTS = 16


class SyntheticSource(FrameSource):
    """Part 0, 1, 2, ... of a SyntheticPartGenerator; the origin names seed and index, so any image can be
    re-rendered later (`SyntheticPartGenerator(seed).part(index)`)."""

    kind = "synthetic"

    def __init__(
        self,
        seed: int = 0,
        width: int = 512,
        height: int = 512,
        defect_rate: float = 0.2,
        start_index: int = 0,
        lighting: float = 1.0,
    ) -> None:
        try:
            self._generator = SyntheticPartGenerator(
                seed=seed, width=width, height=height, defect_rate=defect_rate, lighting=lighting
            )
        except ValueError as exc:
            raise SourceConfigError(f"synthetic source: {exc}") from exc
        self._next = start_index
        self._open = False
        self._cycle = CACHED_PARTS if width * height > CACHE_ABOVE_PIXELS else 0
        self._cache: dict[int, SyntheticPart] = {}

    @property
    def description(self) -> str:
        g = self._generator
        light = f" lighting={g.lighting:g}" if g.lighting != 1.0 else ""
        return f"synthetic:seed={g.seed} {g.width}x{g.height} defect_rate={g.defect_rate:g}{light}"

    def set_lighting(self, lighting: float) -> None:
        """Change the scene light from the next part on (the drift tests' changed lamp)."""
        self._generator.lighting = float(lighting)
        self._cache = {}  # parts rendered under the old light

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        self._open = False

    def read(self) -> Frame:
        index = self._next
        self._next += 1
        if self._cycle:
            index %= self._cycle
            part = self._cache.get(index)
            if part is None:
                part = self._cache[index] = self._generator.part(index)
                part.image.flags.writeable = False  # shown again and again: nobody may draw on it
        else:
            part = self._generator.part(index)
        image = part.image
        if self.frame_allocator is not None:
            # The "exposure" lands in the buffer the driver gives (a frame-pool slot): as a camera whose DMA
            # target is the slot, the frame is captured once it is there and nothing copies it after.
            image = self.frame_buffer(image.shape, image.dtype)
            np.copyto(image, part.image)
        return Frame(image, "bgr8", f"synthetic:{self._generator.seed}:{index}", part.label, part.defect_type)

    def stats(self) -> dict[str, object]:
        values: dict[str, object] = {"next_index": self._next}
        if self._cycle:
            values["cycled_parts"] = f"{len(self._cache)}/{self._cycle} rendered"
        return values
