"""Render a sandbox scene graph to an RGB image with PIL (deterministic given the scene seed)."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .world import GRID, Scene, SceneObject

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 135, 20),
}
BACKGROUND = (245, 245, 245)


def render(scene: Scene, image_size: int = 96) -> Image.Image:
    """Draw every object in its cell; small objects have radius ~0.22 cell, large ~0.40 cell.

    A little positional jitter (seeded by the scene) keeps the task from being a lookup table.
    """
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    rng = random.Random(scene.seed * 7919 + 13)
    cell = image_size / GRID
    for obj in scene.objects:
        r = cell * (0.40 if obj.size == "large" else 0.22)
        slack = max(0.0, cell / 2 - r - 1)
        cx = (obj.cell % GRID + 0.5) * cell + rng.uniform(-slack, slack) * 0.5
        cy = (obj.cell // GRID + 0.5) * cell + rng.uniform(-slack, slack) * 0.5
        _draw_shape(draw, obj, cx, cy, r)
    return img


def _poly(cx: float, cy: float, r: float, n: int, rot: float = 0.0) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float) -> None:
    col = RGB[obj.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    s = obj.shape
    if s == "circle":
        draw.ellipse(box, fill=col)
    elif s == "ring":
        draw.ellipse(box, outline=col, width=max(2, int(r * 0.4)))
    elif s == "square":
        k = r * 0.85
        draw.rectangle((cx - k, cy - k, cx + k, cy + k), fill=col)
    elif s == "triangle":
        draw.polygon(_poly(cx, cy + r * 0.15, r, 3, -math.pi / 2), fill=col)
    elif s == "diamond":
        draw.polygon(_poly(cx, cy, r, 4, 0.0), fill=col)
    elif s == "hexagon":
        draw.polygon(_poly(cx, cy, r, 6, 0.0), fill=col)
    elif s == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=col)
    elif s == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=col)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=col)
    else:
        raise ValueError(f"unknown shape {s!r}")
