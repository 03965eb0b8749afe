"""The harder synthetic benchmark: flat textured parts (cast or brushed grey metal) with fine, low-contrast defects.

The bottles of `qc_contract.synthetic` are easy (every model scores AUC 1.0 on them). These parts are built to
look like the real data sets the bottles do not resemble:
- a grey surface with texture at several scales (grain, brushing streaks, mottling) whose contrast is of the
  same order as the defects';
- defects a few pixels wide at the working resolution (about 300 x 300): hairline cracks (a 1-px random walk),
  thin scratches, pits of 2-6 px, faint stains; 8-30 grey levels against texture of 4-8 levels standard
  deviation, so a 224-px input (which shrinks them further) loses some of them;
- lighting drift along the part index (exposure slowly oscillates as a lamp ages and warms, the light gradient
  turns) on top of per-part jitter, so a model must not rely on absolute brightness;
- class imbalance is set by the writer's counts (`write_mvtec_dataset(product="surface", ...)`).

Same interface as `SyntheticPartGenerator` (part / part_with, deterministic in (seed, index), masks), so the
MVTec-layout writer, the camera's synthetic source and the tests use either.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from qc_contract.synthetic import check_generator_args

SURFACE_DEFECT_TYPES = ("crack", "scratch", "pit", "stain")

_TEXTURE_PAD = 96  # the texture bank is this much larger than the image in each direction
DRIFT_PERIOD = 400  # parts per exposure-drift cycle


class SurfacePartGenerator:
    """Deterministic, random-access source of textured flat parts with fine defects."""

    def __init__(
        self,
        seed: int = 0,
        width: int = 320,
        height: int = 320,
        defect_rate: float = 0.2,
        defect_types: Sequence[str] = SURFACE_DEFECT_TYPES,
    ) -> None:
        check_generator_args(seed, width, height, defect_rate, defect_types, SURFACE_DEFECT_TYPES)
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        self.defect_rate = float(defect_rate)
        self.defect_types = tuple(defect_types)
        self._scale = min(self.width, self.height) / 320.0  # defect sizes are designed at 320 px
        self._bank: np.ndarray | None = None

    # -- public API -----------------------------------------------------------------------------------

    def part(self, index: int):
        label_rng, _, _ = self._streams(index)
        defect_type = None
        if label_rng.random() < self.defect_rate:
            defect_type = self.defect_types[int(label_rng.integers(len(self.defect_types)))]
        return self.part_with(index, defect_type)

    def part_with(self, index: int, defect_type: str | None):
        from qc_contract.synthetic import SyntheticPart

        if defect_type is not None and defect_type not in SURFACE_DEFECT_TYPES:
            raise ValueError(f"unknown defect type {defect_type!r}; known: {list(SURFACE_DEFECT_TYPES)}")
        _, look_rng, defect_rng = self._streams(index)
        gray = self._surface(look_rng)
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        if defect_type is not None:
            _PAINTERS[defect_type](self, gray, mask, defect_rng)
        gray = self._light(gray, index, look_rng)
        gray += look_rng.normal(0.0, look_rng.uniform(1.5, 3.0), gray.shape).astype(np.float32)
        tint = np.float32(1.0) + look_rng.normal(0, 0.015, 3).astype(np.float32)
        image = cv2.merge([gray * tint[0], gray * tint[1], gray * tint[2]])
        np.clip(image, 0.0, 255.0, out=image)
        return SyntheticPart(
            image=image.astype(np.uint8),
            label="good" if defect_type is None else "defect",
            defect_type=defect_type,
            mask=mask,
        )

    # -- rendering ------------------------------------------------------------------------------------

    def _streams(self, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
        if index < 0:
            raise ValueError(f"part index {index} must be >= 0")
        children = np.random.SeedSequence([self.seed, int(index), 0x5F]).spawn(3)
        return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]

    def _texture_bank(self) -> np.ndarray:
        """Zero-mean texture, unit-ish standard deviation: fine grain + brushing streaks + coarse mottling."""
        if self._bank is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x7E47]))
            shape = (self.height + _TEXTURE_PAD, self.width + _TEXTURE_PAD)
            s = self._scale
            grain = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 0.7 * s)
            streaks = cv2.GaussianBlur(
                rng.standard_normal(shape, dtype=np.float32), (0, 0), sigmaX=9 * s, sigmaY=0.8 * s
            )
            mottle = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 14 * s)
            bank = [c / (c.std() + 1e-6) for c in (grain, streaks, mottle)]
            self._bank = np.stack(bank)
        return self._bank

    def _surface(self, rng: np.random.Generator) -> np.ndarray:
        bank = self._texture_bank()
        oy, ox = (int(v) for v in rng.integers(0, _TEXTURE_PAD + 1, size=2))
        window = bank[:, oy : oy + self.height, ox : ox + self.width]
        weights = np.array([rng.uniform(2.5, 4.0), rng.uniform(2.0, 4.5), rng.uniform(2.0, 5.0)], dtype=np.float32)
        texture = np.tensordot(weights, window, axes=(0, 0)).astype(np.float32)
        flip = int(rng.integers(-1, 2))
        texture = cv2.flip(texture, flip)
        if self.width == self.height and rng.random() < 0.5:
            texture = np.ascontiguousarray(texture.T)  # brushing direction turns with the part
        return np.float32(rng.uniform(105, 150)) + texture

    def _light(self, gray: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
        """Exposure drifting slowly over the part index, a turning gradient and vignetting, per-part jitter."""
        phase = 2 * np.pi * index / DRIFT_PERIOD
        gain = 1.0 + 0.14 * np.sin(phase) + rng.normal(0, 0.03)
        turn = 0.5 * phase + rng.normal(0, 0.4)
        strength = 0.12 + 0.06 * np.cos(phase * 0.7)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        u = (xs / self.width - 0.5) * np.float32(np.cos(turn)) + (ys / self.height - 0.5) * np.float32(np.sin(turn))
        r2 = (xs / self.width - 0.5) ** 2 + (ys / self.height - 0.5) ** 2
        field = np.float32(gain) * (1.0 + np.float32(strength) * u) * (1.0 - np.float32(rng.uniform(0.1, 0.3)) * r2)
        return gray * field

    # -- defects (painted before the lighting, so they drift with it) ------------------------------------

    def _point(self, rng: np.random.Generator, margin: float) -> np.ndarray:
        return np.array([rng.uniform(margin, self.width - margin), rng.uniform(margin, self.height - margin)])

    def _draw_line(self, gray: np.ndarray, mask: np.ndarray, pts: np.ndarray, contrast: float, width: int) -> None:
        line = np.zeros(gray.shape, dtype=np.uint8)
        cv2.polylines(line, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], False, 255, width, cv2.LINE_AA, 4)
        gray += line.astype(np.float32) * np.float32(contrast / 255.0)
        k = max(3, round(3 * self._scale) | 1)
        core = np.where(line > 64, np.uint8(255), np.uint8(0))
        cv2.bitwise_or(mask, cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))), dst=mask)

    def _paint_crack(self, gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
        """A hairline crack: a 1-px jagged random walk, darker than the surface, sometimes with a branch."""
        s = self._scale
        n = int(rng.integers(14, 30))
        step = rng.uniform(2.0, 3.5) * s
        heading = rng.uniform(0, 2 * np.pi)
        pts = [self._point(rng, 50 * s)]
        for _ in range(n):
            heading += rng.normal(0, 0.45)
            pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        pts_a = np.array(pts)
        contrast = -rng.uniform(18, 34)
        self._draw_line(gray, mask, pts_a, contrast, max(1, round(s)))
        if rng.random() < 0.4:
            start = pts_a[int(rng.integers(len(pts_a) // 3, len(pts_a)))]
            branch = [start]
            heading += rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
            for _ in range(int(rng.integers(4, 10))):
                heading += rng.normal(0, 0.4)
                branch.append(branch[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
            self._draw_line(gray, mask, np.array(branch), contrast * 0.8, max(1, round(s)))

    def _paint_scratch(self, gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
        """A thin, gently curved scratch, brighter or darker than the surface by a few tens of grey levels."""
        s = self._scale
        p0 = self._point(rng, 40 * s)
        length = rng.uniform(30, 80) * s
        direction = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(direction), np.sin(direction)])
        p2 = p0 + d * length
        p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * rng.uniform(-0.1, 0.1) * length
        t = np.linspace(0, 1, 20)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        contrast = rng.uniform(16, 30) * (1 if rng.random() < 0.6 else -1)
        self._draw_line(gray, mask, curve, contrast, max(1, round(s)))

    def _paint_pit(self, gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
        """One to three pits: dark dots of 2-6 px with a faint bright lip."""
        s = self._scale
        for _ in range(int(rng.integers(1, 4))):
            c = self._point(rng, 12 * s)
            radius = rng.uniform(1.0, 3.0) * s
            spot = np.zeros(gray.shape, dtype=np.uint8)
            cv2.circle(spot, tuple(int(v) for v in np.round(c * 16)), round(radius * 16), 255, -1, cv2.LINE_AA, 4)
            soft = cv2.GaussianBlur(spot, (0, 0), 0.6 * s).astype(np.float32) / 255.0
            gray -= soft * np.float32(rng.uniform(25, 45))
            cv2.bitwise_or(mask, cv2.dilate(np.where(soft > 0.1, np.uint8(255), np.uint8(0)), None), dst=mask)

    def _paint_stain(self, gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
        """A faint soft blob (residue, discolouration): low contrast, 8-16 px across."""
        s = self._scale
        c = self._point(rng, 20 * s)
        axes = (rng.uniform(4, 8) * s, rng.uniform(3, 6) * s)
        blob = np.zeros(gray.shape, dtype=np.uint8)
        center = tuple(int(v) for v in np.round(c * 16))
        cv2.ellipse(
            blob, center, tuple(round(a * 16) for a in axes), rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, 4
        )
        soft = cv2.GaussianBlur(blob, (0, 0), 2.0 * s).astype(np.float32) / 255.0
        gray += soft * np.float32(rng.uniform(12, 22) * (1 if rng.random() < 0.5 else -1))
        cv2.bitwise_or(mask, np.where(soft >= 0.25, np.uint8(255), np.uint8(0)), dst=mask)


_PAINTERS = {
    "crack": SurfacePartGenerator._paint_crack,
    "scratch": SurfacePartGenerator._paint_scratch,
    "pit": SurfacePartGenerator._paint_pit,
    "stain": SurfacePartGenerator._paint_stain,
}
