"""Synthetic scenes with exact ground truth: the sandbox world.

A scene is a 3x3 grid of cells; each object has a shape (its *category*, as a COCO class is
for CHAIR), a colour, a size and a cell. Shapes are distinct within a scene, so "the star"
names one object, like a COCO category in an image.

A **co-occurrence prior** ties shapes into companion pairs (circle-square, ...): when one is
drawn, its companion is drawn too with probability ``cooccur_p``. A model that learns the
prior names the usual companion even when it is absent, the mechanism behind object
hallucination in real VLMs (Rohrbach et al. 2018; RLAIF-V, Yu et al. 2025, Sec. 1).
Confusable attributes (orange/red/yellow; circle/ring/hexagon at small size) make
misrecognition possible too.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3
#: Position names in reading order (row-major), as they appear in sentences.
POSITIONS: tuple[str, ...] = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)
#: Default companion pairs of the co-occurrence prior (each shape has exactly one companion).
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "square"), ("triangle", "diamond"), ("star", "cross"), ("ring", "hexagon"),
)


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its category (shape) and attributes."""

    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass
class Scene:
    """A scene graph: the exact ground truth of one sandbox image."""

    scene_id: str
    objects: list[SceneObject]
    seed: int = 0

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def by_shape(self, shape: str) -> SceneObject | None:
        return next((o for o in self.objects if o.shape == shape), None)

    def by_cell(self, cell: int) -> SceneObject | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def reading_order(self) -> list[SceneObject]:
        return sorted(self.objects, key=lambda o: o.cell)

    def to_dict(self) -> dict:
        return {"scene_id": self.scene_id, "seed": self.seed, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(d["scene_id"], [SceneObject(**o) for o in d["objects"]], d.get("seed", 0))


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Defaults are the calibrated sandbox world (see ARCHITECTURE.md)."""

    min_objects: int = 1
    max_objects: int = 5
    cooccur_p: float = 0.8
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    image_size: int = 96

    def companion(self, shape: str) -> str | None:
        for a, b in self.pairs:
            if shape == a:
                return b
            if shape == b:
                return a
        return None


@dataclass
class World:
    """A seeded scene generator. ``World(cfg).scene(i, split)`` is a pure function of (cfg, i, split)."""

    config: WorldConfig = field(default_factory=WorldConfig)

    def scene(self, index: int, split: str = "train") -> Scene:
        seed = _scene_seed(index, split)
        rng = random.Random(seed)
        cfg = self.config
        n = rng.randint(cfg.min_objects, cfg.max_objects)
        shapes: list[str] = []
        while len(shapes) < n:
            s = rng.choice([x for x in SHAPES if x not in shapes])
            shapes.append(s)
            comp = cfg.companion(s)
            if comp and comp not in shapes and len(shapes) < n and rng.random() < cfg.cooccur_p:
                shapes.append(comp)
        cells = rng.sample(range(GRID * GRID), len(shapes))
        objects = [
            SceneObject(shape=s, colour=rng.choice(COLOURS), size=rng.choice(SIZES), cell=c)
            for s, c in zip(shapes, cells)
        ]
        return Scene(scene_id=f"{split}-{index:06d}", objects=objects, seed=seed)

    def scenes(self, n: int, split: str = "train", start: int = 0) -> list[Scene]:
        return [self.scene(i, split) for i in range(start, start + n)]


_SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


def _scene_seed(index: int, split: str) -> int:
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_OFFSET)}")
    return _SPLIT_OFFSET[split] + index
