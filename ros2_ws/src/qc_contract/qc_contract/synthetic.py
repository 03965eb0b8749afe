"""Procedural product images: a glass bottle seen from above, in the style of MVTec AD 'bottle'.

Used by the demo (the camera driver's `synthetic` source), by training tests (MVTec-layout data sets via
`write_mvtec_dataset` / the `qc_synthetic_parts` CLI) and by system tests (ground truth per part).

How a part is rendered (all vectorised, a 512x512 part takes a few ms):
- The bottle is described in polar coordinates around its (jittered, slightly elliptical, rotated) axis:
  brightness = sum of radial profile x angular profile terms (concentric rim/shoulder/opening shading,
  directional light, glass texture, glossy highlights). Each term is a 1-D lookup table gathered at the
  pixel's quantised radius/angle, computed at half resolution and upscaled (the optics are soft anyway).
- Colour tint, a global lighting gradient, a defect (if any) and sensor noise are applied at full resolution.
  The noise comes from a per-generator noise bank sliced at a random offset, which is far cheaper than
  drawing fresh Gaussian noise for every pixel of every part and statistically indistinguishable for a CNN.
- Every part is a pure function of (seed, index): random access, reproducible across runs and machines.
  The part's appearance and its defect use separate random streams, so `part_with(i, None)` and
  `part_with(i, "scratch")` show the same bottle, once without and once with the scratch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

DEFECT_TYPES = ("broken_large", "broken_small", "contamination", "scratch")

_RADIAL_BINS_PER_UNIT = 512  # radius 1.0 = outer bottle edge
_RADIAL_MAX = 2.0  # LUTs cover r in [0, 2); beyond that is background
_ANGULAR_BINS = 2048
_NOISE_PAD = 64  # the noise bank is this much larger than the image in each direction


@dataclass(frozen=True)
class SyntheticPart:
    image: np.ndarray  # H x W x 3 uint8, BGR
    label: str  # "good" or "defect"
    defect_type: str | None  # one of DEFECT_TYPES, None when good
    mask: np.ndarray  # H x W uint8, 255 where the defect is (all 0 when good)


@dataclass(frozen=True)
class _Geometry:
    """Where the bottle is in the image, in full-resolution pixels."""

    cx: float
    cy: float
    radius: float  # outer bottle edge along the major axis
    aspect: float  # minor/major axis ratio (a slight tilt makes the circle an ellipse)
    rotation: float  # radians, orientation of the ellipse and of the glass texture
    rim_inner: float  # normalised radii (1.0 = outer edge)
    rim_outer: float
    light_angle: float  # radians, direction the key light comes from


@lru_cache(maxsize=8)
def _pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an image (row vector of x, column vector of y), float32, cached."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _polar(geo: _Geometry, width: int, height: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantised normalised radius and angle (LUT indices) of every pixel of an image `scale` x the full size."""
    xs, ys = _pixel_grid(width, height)
    dx = (xs + 0.5) / scale - 0.5 - geo.cx
    dy = (ys + 0.5) / scale - 0.5 - geo.cy
    c, s = np.float32(np.cos(geo.rotation)), np.float32(np.sin(geo.rotation))
    u = (dx * c + dy * s) * np.float32(1.0 / geo.radius)
    v = (dy * c - dx * s) * np.float32(1.0 / (geo.radius * geo.aspect))
    mag, ang = cv2.cartToPolar(u, v)  # ang in [0, 2pi), measured in the bottle's own frame
    r_idx = np.minimum(mag * _RADIAL_BINS_PER_UNIT, _RADIAL_BINS_PER_UNIT * _RADIAL_MAX - 1).astype(np.intp)
    a_idx = (ang * (_ANGULAR_BINS / (2 * np.pi))).astype(np.intp) % _ANGULAR_BINS
    return r_idx, a_idx


def check_generator_args(
    seed: int, width: int, height: int, defect_rate: float, defect_types: Sequence[str], known: Sequence[str]
) -> None:
    """The arguments every part generator shares, checked with one wording (ValueError)."""
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    if width < 32 or height < 32:
        raise ValueError(f"image size {width}x{height} too small (at least 32x32)")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate {defect_rate} must be within [0, 1]")
    unknown = [t for t in defect_types if t not in known]
    if unknown:
        raise ValueError(f"unknown defect types {unknown}; known: {list(known)}")
    if defect_rate > 0 and not defect_types:
        raise ValueError("defect_rate > 0 needs at least one defect type")


class SyntheticPartGenerator:
    """Deterministic, random-access source of bottle images with a controllable defect rate."""

    def __init__(
        self,
        seed: int = 0,
        width: int = 512,
        height: int = 512,
        defect_rate: float = 0.2,
        defect_types: Sequence[str] = DEFECT_TYPES,
        lighting: float = 1.0,
    ) -> None:
        check_generator_args(seed, width, height, defect_rate, defect_types, DEFECT_TYPES)
        if not 0.05 <= lighting <= 4.0:
            raise ValueError(f"lighting {lighting} must be within [0.05, 4] (1 = the nominal light)")
        self.seed = int(seed)
        # Scene light / exposure gain on top of the per-part variation (1 = nominal): a dimmer lamp, a dirty
        # diffuser or a changed exposure. Settable between parts (the drift tests change it mid-run).
        self.lighting = float(lighting)
        self.width = int(width)
        self.height = int(height)
        self.defect_rate = float(defect_rate)
        self.defect_types = tuple(defect_types)
        self._scale = min(self.width, self.height) / 512.0  # defect sizes are designed at 512 px
        self._noise: np.ndarray | None = None

    # -- public API -----------------------------------------------------------------------------------

    def part(self, index: int) -> SyntheticPart:
        """Part number `index`: good or defective as drawn with defect_rate, deterministic in (seed, index)."""
        label_rng, _, _ = self._streams(index)
        defect_type = None
        if label_rng.random() < self.defect_rate:
            defect_type = self.defect_types[int(label_rng.integers(len(self.defect_types)))]
        return self.part_with(index, defect_type)

    def part_with(self, index: int, defect_type: str | None) -> SyntheticPart:
        """Part number `index` with a forced label: good when defect_type is None, else that defect."""
        if defect_type is not None and defect_type not in DEFECT_TYPES:
            raise ValueError(f"unknown defect type {defect_type!r}; known: {list(DEFECT_TYPES)}")
        _, look_rng, defect_rng = self._streams(index)
        geo = self._geometry(look_rng)
        image, sigma = self._render_bottle(geo, look_rng)
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        if defect_type is not None:
            _DEFECT_PAINTERS[defect_type](self, image, mask, geo, defect_rng)
        self._add_noise(image, sigma, look_rng)
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
        children = np.random.SeedSequence([self.seed, int(index)]).spawn(3)
        return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]

    def _geometry(self, rng: np.random.Generator) -> _Geometry:
        w, h = self.width, self.height
        size = min(w, h)
        radius = size * rng.uniform(0.40, 0.445)
        rim_inner = rng.uniform(0.36, 0.41)
        return _Geometry(
            cx=w / 2 + rng.normal(0, 0.012) * size,
            cy=h / 2 + rng.normal(0, 0.012) * size,
            radius=radius,
            aspect=rng.uniform(0.975, 1.0),
            rotation=rng.uniform(0, 2 * np.pi),
            rim_inner=rim_inner,
            rim_outer=rim_inner + rng.uniform(0.055, 0.075),
            light_angle=rng.normal(-2.3, 0.25),  # key light from the upper left, as in the MVTec set-up
        )

    def _radial_profiles(self, geo: _Geometry, rng: np.random.Generator) -> dict[str, np.ndarray]:
        r = np.arange(int(_RADIAL_BINS_PER_UNIT * _RADIAL_MAX), dtype=np.float32) / _RADIAL_BINS_PER_UNIT
        ri, ro = geo.rim_inner, geo.rim_outer
        rim_mid, rim_half = (ri + ro) / 2, (ro - ri) / 2
        edge = 3.0 / geo.radius  # ~1.5 px soft edges at full resolution
        inside_bottle = 1.0 - _smoothstep(r, 1.0 - edge, 1.0 + edge)
        in_opening = 1.0 - _smoothstep(r, ri - edge, ri + edge)
        on_shoulder = _smoothstep(r, ro - edge, ro + edge) * inside_bottle
        # The opening: the bottle's bottom seen through the neck, dark with faint concentric rings.
        opening = (
            rng.uniform(22, 34)
            + rng.uniform(18, 30) * _gauss(r, 0.0, ri * 0.45)
            + rng.uniform(10, 18) * _gauss(r, ri * rng.uniform(0.55, 0.7), ri * 0.06)
            + rng.uniform(6, 12) * _gauss(r, ri * 0.92, ri * 0.05)
        )
        # The rim: a bright glass ring with a darker groove in its middle.
        rim = rng.uniform(150, 190) * (
            _gauss(r, rim_mid - rim_half * 0.45, rim_half * 0.4)
            + 0.85 * _gauss(r, rim_mid + rim_half * 0.5, rim_half * 0.35)
        ) + 45.0 * _gauss(r, rim_mid, rim_half)
        rim_band = _smoothstep(r, ri - edge, ri + edge) * (1.0 - _smoothstep(r, ro - edge, ro + edge))
        # The shoulder: a shadowed neck, rising to a broad mid-grey slope, and a thin bright outer contour.
        shoulder = (
            rng.uniform(45, 60)
            + rng.uniform(55, 80) * _smoothstep(r, ro, ro + 0.25) * (1.0 - 0.55 * _smoothstep(r, 0.8, 1.0))
            + rng.uniform(25, 45) * _gauss(r, rng.uniform(0.6, 0.72), 0.05)
            + rng.uniform(40, 70) * _gauss(r, 0.965, 0.012)
        )
        background = rng.uniform(8, 18) + rng.uniform(4, 10) * np.exp(-(np.maximum(r - 1.0, 0.0) / 0.3))
        base = opening * in_opening + rim * rim_band + shoulder * on_shoulder + background * (1.0 - inside_bottle)
        # Where the glass texture and directional light modulate the brightness (glass, not background).
        texture_weight = base * (0.35 * in_opening + rim_band + on_shoulder)
        shoulder_spot = rng.uniform(60, 110) * _gauss(r, rng.uniform(0.62, 0.8), rng.uniform(0.05, 0.08)) * on_shoulder
        rim_glint = rng.uniform(50, 90) * _gauss(r, rim_mid, rim_half * 0.6)
        return {"base": base, "texture": texture_weight, "spot": shoulder_spot, "glint": rim_glint}

    def _angular_profiles(self, geo: _Geometry, rng: np.random.Generator) -> dict[str, np.ndarray]:
        phi = np.arange(_ANGULAR_BINS, dtype=np.float32) * np.float32(2 * np.pi / _ANGULAR_BINS)
        light = geo.light_angle - geo.rotation  # the light is fixed in the world, the LUT is in the bottle frame

        def around(center: float, width: float) -> np.ndarray:
            d = np.angle(np.exp(1j * (phi - center))).astype(np.float32)  # wrapped angular distance
            return np.exp(-0.5 * (d / width) ** 2)

        texture = (
            0.14 * np.cos(phi - light)
            + 0.05 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi))
            + 0.03 * np.sin(7 * phi + rng.uniform(0, 2 * np.pi))
            + 0.02 * np.sin(17 * phi + rng.uniform(0, 2 * np.pi))
        )
        return {
            "texture": texture.astype(np.float32),
            "spot": around(light, rng.uniform(0.18, 0.3)),
            "glint": around(light + np.pi + rng.normal(0, 0.2), rng.uniform(0.25, 0.45))
            + 0.6 * around(light, rng.uniform(0.15, 0.3)),
        }

    def _render_bottle(self, geo: _Geometry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The good bottle as float32 H x W x 3 (BGR) before noise, and the per-pixel noise sigma (same shape)."""
        radial = self._radial_profiles(geo, rng)
        angular = self._angular_profiles(geo, rng)
        hw, hh = (self.width + 1) // 2, (self.height + 1) // 2
        r_idx, a_idx = _polar(geo, hw, hh, scale=0.5)
        gray = radial["base"][r_idx]
        gray += radial["texture"][r_idx] * angular["texture"][a_idx]
        gray += radial["spot"][r_idx] * angular["spot"][a_idx]
        gray += radial["glint"][r_idx] * angular["glint"][a_idx]
        # Global exposure and a gentle lighting gradient across the field of view (smooth: half resolution).
        xs, ys = _pixel_grid(hw, hh)
        gx, gy = rng.normal(0, 0.08, size=2)
        gain = rng.uniform(0.85, 1.15) * self.lighting
        gray *= np.float32(gain) * (1.0 + np.float32(gx / hw) * (xs - hw / 2) + np.float32(gy / hh) * (ys - hh / 2))
        # Sensor noise: shot noise grows with brightness, read noise is constant.
        read, shot = rng.uniform(1.2, 2.5), rng.uniform(0.08, 0.16)
        sigma = np.float32(read) + np.float32(shot) * np.sqrt(np.maximum(gray, 0.0))
        size = (self.width, self.height)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR)
        sigma = cv2.resize(sigma, size, interpolation=cv2.INTER_LINEAR)
        # Slightly greenish-grey glass under a neutral light; white balance varies a little per frame.
        tint = np.array([0.93, 1.0, 0.95], dtype=np.float32) * rng.normal(1.0, 0.02, size=3).astype(np.float32)
        image = cv2.merge([gray * tint[0], gray * tint[1], gray * tint[2]])  # OpenCV: much faster than broadcasting
        return image, cv2.merge([sigma, sigma, sigma])

    def _noise_bank(self) -> np.ndarray:
        if self._noise is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED]))
            shape = (self.height + _NOISE_PAD, self.width + _NOISE_PAD, 3)
            self._noise = rng.standard_normal(shape, dtype=np.float32)
        return self._noise

    def _add_noise(self, image: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> None:
        """image += unit noise x sigma, the noise a randomly offset and flipped slice of the noise bank."""
        oy, ox = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, size=2))
        noise = cv2.flip(self._noise_bank()[oy : oy + self.height, ox : ox + self.width], int(rng.integers(-1, 2)))
        cv2.add(image, cv2.multiply(noise, sigma), dst=image)

    # -- defects --------------------------------------------------------------------------------------
    # Each painter changes `image` (float32 BGR) in place and marks the defect in `mask` with 255. They work
    # on a window around the defect only, so a defect costs about as much as its own area.

    def _to_pixels(self, geo: _Geometry, r: float, angle: float) -> np.ndarray:
        """Image position (x, y) of normalised radius r at angle `angle` (bottle frame)."""
        u, v = r * np.cos(angle) * geo.radius, r * np.sin(angle) * geo.radius * geo.aspect
        c, s = np.cos(geo.rotation), np.sin(geo.rotation)
        return np.array([geo.cx + u * c - v * s, geo.cy + u * s + v * c])

    def _window(self, points: np.ndarray, margin: float) -> tuple[slice, slice, np.ndarray]:
        """Row/column slices of the image around `points` (N x 2, x/y pixels) and the window's origin (x, y)."""
        x0 = int(np.clip(np.floor(points[:, 0].min() - margin), 0, self.width - 1))
        y0 = int(np.clip(np.floor(points[:, 1].min() - margin), 0, self.height - 1))
        x1 = int(np.clip(np.ceil(points[:, 0].max() + margin) + 1, x0 + 1, self.width))
        y1 = int(np.clip(np.ceil(points[:, 1].max() + margin) + 1, y0 + 1, self.height))
        return slice(y0, y1), slice(x0, x1), np.array([x0, y0], dtype=np.float64)

    @staticmethod
    def _fixed_point(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """Points relative to a window origin with 4 fractional bits, for sub-pixel OpenCV drawing."""
        return np.round((points - origin) * 16).astype(np.int32).reshape(-1, 1, 2)

    @staticmethod
    def _jagged_polygon(
        rng: np.random.Generator, center: np.ndarray, size: float, vertices: int, roughness: float
    ) -> np.ndarray:
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        radii = size * (1.0 + roughness * rng.uniform(-1.0, 1.0, vertices))
        stretch = rng.uniform(0.6, 1.0)
        tilt = rng.uniform(0, np.pi)
        x = radii * np.cos(angles)
        y = radii * np.sin(angles) * stretch
        ct, st = np.cos(tilt), np.sin(tilt)
        return np.stack([center[0] + x * ct - y * st, center[1] + x * st + y * ct], axis=1)

    def _glass_mask(self, geo: _Geometry, r_max: float, shape: tuple[int, int], origin: np.ndarray) -> np.ndarray:
        """255 inside the bottle (normalised radius < r_max), for a window at `origin`."""
        mask = np.zeros(shape, dtype=np.uint8)
        center = (round((geo.cx - origin[0]) * 16), round((geo.cy - origin[1]) * 16))
        axes = (round(geo.radius * r_max * 16), round(geo.radius * r_max * geo.aspect * 16))
        cv2.ellipse(mask, center, axes, float(np.degrees(geo.rotation)), 0, 360, 255, -1, cv2.LINE_8, 4)
        return mask

    def _paint_broken(
        self, image: np.ndarray, mask: np.ndarray, geo: _Geometry, rng: np.random.Generator, large: bool
    ) -> None:
        """A piece of the rim is chipped off: the bright ring is interrupted by a dark, jagged fracture whose
        sharp edges catch the light."""
        angle = rng.uniform(0, 2 * np.pi)
        if large:
            size = geo.radius * rng.uniform(0.13, 0.2)
            r0 = geo.rim_outer + rng.uniform(-0.02, 0.06)
        else:
            size = geo.radius * rng.uniform(0.045, 0.07)
            r0 = rng.uniform(geo.rim_inner, geo.rim_outer)
        poly = self._jagged_polygon(rng, self._to_pixels(geo, r0, angle), size, int(rng.integers(9, 16)), 0.35)
        rows, cols, origin = self._window(poly, margin=4)
        img, msk = image[rows, cols], mask[rows, cols]
        chip = np.zeros_like(msk)
        cv2.fillPoly(chip, [self._fixed_point(poly, origin)], 255, cv2.LINE_8, 4)
        # A chip only exists where there is glass: cut the region to the bottle (the rim always is glass).
        cv2.bitwise_and(chip, self._glass_mask(geo, 0.98, chip.shape, origin), dst=chip)
        region = chip > 0
        depth = np.float32(rng.uniform(0.25, 0.45))  # the fracture surface is much darker than intact glass
        img[region] = img[region] * depth + np.float32(rng.uniform(10, 25))
        # Bright, thin fracture edges (glass breaks with sharp specular edges).
        k = max(3, round(3 * self._scale) | 1)
        edge = cv2.morphologyEx(chip, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        alpha = cv2.GaussianBlur(edge, (0, 0), 0.8).astype(np.float32) * np.float32(rng.uniform(0.35, 0.6) / 255)
        img += (np.float32(210.0) - img) * alpha[:, :, None]
        cv2.bitwise_or(msk, cv2.bitwise_or(chip, edge), dst=msk)

    def _paint_contamination(
        self, image: np.ndarray, mask: np.ndarray, geo: _Geometry, rng: np.random.Generator
    ) -> None:
        """Foreign matter: one to three soft, irregular blobs; dark brownish particles on the (bright) shoulder
        or whitish residue in the (dark) opening."""
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                r0 = rng.uniform(geo.rim_outer + 0.06, 0.85)
                color = np.array([20, 38, 62], dtype=np.float32) * np.float32(rng.uniform(0.5, 1.3))
            else:
                r0 = rng.uniform(0.0, geo.rim_inner * 0.75)
                color = np.array([140, 160, 175], dtype=np.float32) * np.float32(rng.uniform(0.75, 1.2))
            size = geo.radius * rng.uniform(0.035, 0.09)
            poly = self._jagged_polygon(
                rng, self._to_pixels(geo, r0, rng.uniform(0, 2 * np.pi)), size, int(rng.integers(7, 13)), 0.4
            )
            blur = max(0.8, size * 0.12)
            rows, cols, origin = self._window(poly, margin=3 * blur + 2)
            img, msk = image[rows, cols], mask[rows, cols]
            blob = np.zeros_like(msk)
            cv2.fillPoly(blob, [self._fixed_point(poly, origin)], 255, cv2.LINE_8, 4)
            soft = cv2.GaussianBlur(blob, (0, 0), blur)
            img += (color - img) * (soft.astype(np.float32) * np.float32(rng.uniform(0.75, 0.95) / 255))[:, :, None]
            # The ground truth is the visible blob including its soft rim (>= 10 % opacity).
            cv2.bitwise_or(msk, np.where(soft >= 26, np.uint8(255), np.uint8(0)), dst=msk)

    def _paint_scratch(self, image: np.ndarray, mask: np.ndarray, geo: _Geometry, rng: np.random.Generator) -> None:
        """A thin, slightly curved line on the shoulder or rim: subtle (a few tens of grey levels), but still a
        visible line at 224 x 224."""
        p0 = self._to_pixels(geo, rng.uniform(geo.rim_inner, 0.85), rng.uniform(0, 2 * np.pi))
        length = geo.radius * rng.uniform(0.25, 0.5)
        direction = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(direction), np.sin(direction)])
        p2 = p0 + d * length
        p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * rng.uniform(-0.15, 0.15) * length
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        thickness = max(2, round(2 * self._scale))
        rows, cols, origin = self._window(curve, margin=thickness + 4)
        img, msk = image[rows, cols], mask[rows, cols]
        line = np.zeros_like(msk)
        cv2.polylines(line, [self._fixed_point(curve, origin)], False, 255, thickness, cv2.LINE_AA, 4)
        # On the glass only (p0 is on the glass, so some of the line always is).
        cv2.bitwise_and(line, self._glass_mask(geo, 0.97, line.shape, origin), dst=line)
        contrast = rng.uniform(30, 55) * (1 if rng.random() < 0.65 else -1)  # scratches mostly catch the light
        img += (line.astype(np.float32) * np.float32(contrast / 255))[:, :, None]
        # The ground-truth region is a little wider than the line, as annotated in MVTec AD.
        k = max(3, round(3 * self._scale) | 1)
        core = np.where(line > 64, np.uint8(255), np.uint8(0))
        cv2.bitwise_or(msk, cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))), dst=msk)


_DEFECT_PAINTERS = {
    "broken_large": lambda g, img, m, geo, rng: g._paint_broken(img, m, geo, rng, large=True),
    "broken_small": lambda g, img, m, geo, rng: g._paint_broken(img, m, geo, rng, large=False),
    "contamination": SyntheticPartGenerator._paint_contamination,
    "scratch": SyntheticPartGenerator._paint_scratch,
}


PRODUCTS = ("bottle", "surface")


def make_generator(product: str = "bottle", *, defect_types: Sequence[str] | None = None, **kwargs):
    """The part generator of a product: "bottle" (SyntheticPartGenerator) or "surface" (the harder benchmark,
    qc_contract.synthetic_surface.SurfacePartGenerator); both have the same interface."""
    if product == "bottle":
        return SyntheticPartGenerator(defect_types=DEFECT_TYPES if defect_types is None else defect_types, **kwargs)
    if product == "surface":
        from qc_contract.synthetic_surface import SURFACE_DEFECT_TYPES, SurfacePartGenerator

        types = SURFACE_DEFECT_TYPES if defect_types is None else defect_types
        return SurfacePartGenerator(defect_types=types, **kwargs)
    raise ValueError(f"unknown product {product!r}; known: {list(PRODUCTS)}")


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def check_crop(crop: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, width, height) as ints, or ValueError when the region is not inside the width x height frame."""
    x, y, w, h = (int(v) for v in crop)
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > width or y + h > height:
        raise ValueError(f"crop {list(crop)} is not inside the {width}x{height} frame")
    return x, y, w, h


def write_mvtec_dataset(
    root: Path,
    *,
    n_train_good: int,
    n_test_good: int,
    n_test_per_defect: int,
    width: int = 512,
    height: int = 512,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    product: str = "bottle",
    crop: tuple[int, int, int, int] | None = None,
) -> Path:
    """Write an MVTec-AD-layout data set and return its root:

        root/train/good/000.png ...            good parts for training
        root/test/good/000.png ...             good parts for testing
        root/test/<defect>/000.png ...         defective parts, one folder per defect type
        root/ground_truth/<defect>/000_mask.png   binary masks (255 = defect) of the defective test parts
        root/synthetic.json                    the generator settings, to reproduce the set

    Every image is a different part (disjoint index ranges of one generator). `product` picks the generator:
    "bottle" (this module, easy) or "surface" (qc_contract.synthetic_surface: the harder benchmark with fine,
    low-contrast defects on textured grey parts and lighting drift). Class imbalance comes from the counts.
    `crop` (x, y, width, height): only that region of each rendered frame (and mask) is written, e.g. the part's
    region a cell crops out of its frames.
    """
    if product not in PRODUCTS:
        raise ValueError(f"unknown product {product!r}; known: {list(PRODUCTS)}")
    counts = {"n_train_good": n_train_good, "n_test_good": n_test_good, "n_test_per_defect": n_test_per_defect}
    for name, n in counts.items():
        if n < 0:
            raise ValueError(f"{name} = {n} must be >= 0")
    if crop is not None:
        check_crop(crop, width, height)
    generator = make_generator(
        product, seed=seed, width=width, height=height, defect_rate=0.0, defect_types=defect_types
    )
    root = Path(root)
    digits = max(3, len(str(max(n_train_good, n_test_good, n_test_per_defect, 1) - 1)))
    index = 0

    def write_split(folder: Path, n: int, defect_type: str | None) -> None:
        nonlocal index
        folder.mkdir(parents=True, exist_ok=True)
        mask_dir = root / "ground_truth" / defect_type if defect_type else None
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            part = generator.part_with(index, defect_type)
            index += 1
            image, mask = part.image, part.mask
            if crop is not None:
                x, y, w, h = crop
                image = image[y : y + h, x : x + w]
                mask = mask[y : y + h, x : x + w] if mask is not None else None
            _write_png(folder / f"{i:0{digits}d}.png", image)
            if mask_dir is not None:
                _write_png(mask_dir / f"{i:0{digits}d}_mask.png", mask)

    write_split(root / "train" / "good", n_train_good, None)
    write_split(root / "test" / "good", n_test_good, None)
    for defect_type in generator.defect_types:
        write_split(root / "test" / defect_type, n_test_per_defect, defect_type)
    meta = {
        "generator": "qc_contract.synthetic",
        "product": product,
        "seed": seed,
        "width": width,
        "height": height,
        **counts,
    }
    if crop is not None:  # only then: sets written before the key existed read the same
        meta["crop"] = list(crop)
    meta["defect_types"] = list(generator.defect_types)
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
