"""Pillow rendering of scenes: 48x48 RGB, a 3x3 grid of 16-px cells.

The grid is aligned with a 16-px ViT patch, so each cell is exactly one vision token
(STACK-NOTES: grid-aligned patches mattered most). Shapes are drawn at 4x resolution and
box-filtered down, which is deterministic. A :class:`Jitter` re-renders a scene the way
MMEdit's Stable-Diffusion re-generations re-render a photo: a small shift (the object stays inside
its cell), a scale change, another background, mild noise. Every question's answer survives it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .scene import Object, Scene
from .vocabulary import BACKGROUNDS, COLOURS, GRID, SIZES

IMAGE_SIZE = 48
CELL = IMAGE_SIZE // GRID
SUPERSAMPLE = 4
GAP = 0.5  # minimal distance (px) between a jittered object and its cell border

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 50),
    "cyan": (30, 190, 210),
    "blue": (40, 70, 225),
    "purple": (140, 50, 200),
    "pink": (245, 110, 190),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "charcoal": (60, 60, 60),
    "gray": (120, 120, 120),
    "silver": (185, 185, 185),
    "white": (245, 245, 245),
}
assert tuple(COLOUR_RGB) == COLOURS and tuple(BACKGROUND_RGB) == BACKGROUNDS

EXTENT: dict[str, float] = {"small": 9.0, "large": 13.0}
"""Object extent (px, the side of its bounding box) at scale 1."""
assert tuple(EXTENT) == SIZES
RING_WIDTH = 0.3  # ring band, fraction of the extent
CROSS_ARM = 0.36  # cross arm thickness, fraction of the extent

MAX_SHIFT = 2
SCALE_RANGE = (0.92, 1.08)
NOISE_RANGE = (2.0, 6.0)


@dataclass(frozen=True)
class Jitter:
    """How a re-render differs from the canonical rendering: a shift (px, clamped per object so
    that it stays inside its cell), a scale factor, a background (``None``: the scene's), and
    Gaussian pixel noise of standard deviation ``noise`` drawn from ``noise_seed``."""

    dx: int = 0
    dy: int = 0
    scale: float = 1.0
    background: str | None = None
    noise: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class ImageJob:
    """One image to write: its path under the image root, its scene and its jitter (``None``:
    the canonical rendering)."""

    path: str
    scene: Scene
    jitter: Jitter | None

    def write(self, image_root: Path) -> None:
        save_png(render(self.scene, self.jitter), image_root / self.path)


def sample_jitter(rng: random.Random, scene: Scene) -> Jitter:
    """A random re-render of ``scene``; the background always changes."""
    return Jitter(
        dx=rng.randint(-MAX_SHIFT, MAX_SHIFT),
        dy=rng.randint(-MAX_SHIFT, MAX_SHIFT),
        scale=round(rng.uniform(*SCALE_RANGE), 3),
        background=rng.choice([b for b in BACKGROUNDS if b != scene.background]),
        noise=round(rng.uniform(*NOISE_RANGE), 2),
        noise_seed=rng.randrange(2**32),
    )


def _clamp(v: int, limit: int) -> int:
    return max(-limit, min(limit, v))


def object_geometry(obj: Object, jitter: Jitter | None = None) -> tuple[float, float, float]:
    """The object's centre ``(cx, cy)`` and half extent ``r`` in image pixels."""
    j = jitter or Jitter()
    r = EXTENT[obj.size] * j.scale / 2
    limit = max(0, int(CELL / 2 - r - GAP))
    row, col = divmod(obj.cell, GRID)
    cx = col * CELL + CELL / 2 + _clamp(j.dx, limit)
    cy = row * CELL + CELL / 2 + _clamp(j.dy, limit)
    return cx, cy, r


def object_box(obj: Object, jitter: Jitter | None = None) -> tuple[float, float, float, float]:
    """The object's bounding box ``(x0, y0, x1, y1)`` in image pixels; inside its cell."""
    cx, cy, r = object_geometry(obj, jitter)
    return cx - r, cy - r, cx + r, cy + r


def object_anchor(obj: Object, jitter: Jitter | None = None) -> tuple[int, int]:
    """A pixel ``(x, y)`` that the drawn shape covers completely (the ring's band, the triangle's
    lower middle, the centre otherwise): its colour is the object's colour, up to noise."""
    cx, cy, r = object_geometry(obj, jitter)
    if obj.shape == "ring":
        return int(cx + r - RING_WIDTH * r), int(cy)
    if obj.shape == "triangle":
        return int(cx - 0.5), int(cy + 0.3 * r)
    return int(cx - 0.5), int(cy - 0.5)


def _draw(draw: ImageDraw.ImageDraw, obj: Object, jitter: Jitter | None) -> None:
    s = SUPERSAMPLE
    cx, cy, r = (v * s for v in object_geometry(obj, jitter))
    fill = COLOUR_RGB[obj.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        q = 0.9 * r
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif obj.shape == "cross":
        a = CROSS_ARM * r
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
    elif obj.shape == "ring":
        draw.ellipse(box, outline=fill, width=round(2 * RING_WIDTH * r))
    else:  # pragma: no cover - Object validates shapes
        raise ValueError(obj.shape)


def render(scene: Scene, jitter: Jitter | None = None) -> Image.Image:
    """The scene as a 48x48 RGB image; ``jitter=None`` is the canonical rendering."""
    background = BACKGROUND_RGB[(jitter and jitter.background) or scene.background]
    big = Image.new("RGB", (IMAGE_SIZE * SUPERSAMPLE,) * 2, background)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw(draw, obj, jitter)
    image = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    if jitter is not None and jitter.noise > 0:
        rng = np.random.default_rng(jitter.noise_seed)
        noise = rng.normal(0.0, jitter.noise, (IMAGE_SIZE, IMAGE_SIZE, 3))
        pixels = np.asarray(image, dtype=np.float64) + noise
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image


def nearest_colour(rgb: tuple[int, ...]) -> str:
    """The object colour or background name closest to ``rgb`` (for checks and probes)."""
    palette = {**COLOUR_RGB, **BACKGROUND_RGB}

    def distance(name: str) -> int:
        return sum((int(a) - int(b)) ** 2 for a, b in zip(palette[name], rgb[:3], strict=True))

    return min(palette, key=distance)


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG with no metadata: the same pixels give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)
