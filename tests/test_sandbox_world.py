"""Tests for the sandbox world (scene graphs) and its renderer.

The sandbox's metrics are only exact if scenes are a pure function of (config, index, split),
obey their invariants (distinct shapes, distinct cells), carry the co-occurrence prior that
makes hallucination possible, and render deterministically with each object's colour in its
own cell.
"""

from __future__ import annotations

import json

import pytest

from rlaifv.sandbox.render import BACKGROUND, RGB, render
from rlaifv.sandbox.world import GRID, SHAPES, Scene, SceneObject, World, WorldConfig


# --------------------------------------------------------------------------- world


def test_scene_is_a_pure_function_of_index_and_split() -> None:
    # Two separate World objects must produce the very same scene: the seed is derived from
    # (index, split) only, so eval sets are reproducible across processes.
    a, b = World(), World()
    for i in (0, 1, 17, 12345):
        sa, sb = a.scene(i, "train"), b.scene(i, "train")
        assert sa.to_dict() == sb.to_dict()
    assert a.scene(5, "test").to_dict() == b.scene(5, "test").to_dict()


def test_splits_use_disjoint_seeds() -> None:
    # Train/val/test with the same index must not share a seed (else the test set leaks into
    # training). The split offsets are 0, 10_000_000 and 20_000_000.
    w = World()
    seeds = {split: w.scene(3, split).seed for split in ("train", "val", "test")}
    assert seeds == {"train": 3, "val": 10_000_003, "test": 20_000_003}
    assert w.scene(3, "val").scene_id == "val-000003"
    # Seeds differ, so scenes differ for most indices (check a run of indices, not only one).
    same = sum(w.scene(i, "train").to_dict()["objects"] == w.scene(i, "val").to_dict()["objects"] for i in range(50))
    assert same < 5


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        World().scene(0, "dev")


def test_scene_invariants_over_many_scenes() -> None:
    # 1..5 objects, distinct shapes (so "the star" names one object), distinct cells, valid
    # attribute values. Every count 1..5 must actually occur over 2000 scenes.
    counts = set()
    for s in World().scenes(2000):
        n = len(s.objects)
        counts.add(n)
        assert 1 <= n <= 5
        assert len({o.shape for o in s.objects}) == n
        assert len({o.cell for o in s.objects}) == n
        assert all(0 <= o.cell < GRID * GRID for o in s.objects)
        assert all(o.shape in SHAPES for o in s.objects)
    assert counts == {1, 2, 3, 4, 5}


def _cooccurrence(cfg: WorldConfig, n: int = 2000) -> tuple[float, float]:
    """(P(companion present | shape present), P(companion present)) over n train scenes."""
    scenes = World(cfg).scenes(n)
    given = both = marginal = 0
    for s in scenes:
        present = s.shapes()
        for shape in SHAPES:
            comp = cfg.companion(shape)
            marginal += comp in present
            if shape in present:
                given += 1
                both += comp in present
    return both / given, marginal / (n * len(SHAPES))


def test_cooccurrence_prior_is_measurable() -> None:
    # Base rate by hand: the object count is uniform on 1..5 (mean 3) and the 8 shapes are
    # symmetric under the pairing, so P(a given shape is present) = 3/8 = 0.375.
    # With cooccur_p=0.8, a present shape pulls its companion in most of the time, so the
    # conditional must sit far above 0.375; with cooccur_p=0 it must be close to the base rate.
    cond, base = _cooccurrence(WorldConfig())
    cond0, base0 = _cooccurrence(WorldConfig(cooccur_p=0.0))
    assert base == pytest.approx(0.375, abs=0.02)
    assert base0 == pytest.approx(0.375, abs=0.02)
    assert cond > base + 0.25
    assert cond0 == pytest.approx(base0, abs=0.05)
    assert cond > cond0 + 0.25


def test_companion_lookup_is_symmetric() -> None:
    cfg = WorldConfig()
    assert cfg.companion("circle") == "square" and cfg.companion("square") == "circle"
    assert cfg.companion("ring") == "hexagon" and cfg.companion("hexagon") == "ring"
    assert cfg.companion("blob") is None


def test_scene_dict_roundtrip_through_json() -> None:
    # Scenes are stored as JSON in records; a roundtrip must give back an equal Scene.
    s = World().scene(42, "val")
    back = Scene.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    assert back.seed == s.seed == 10_000_042
    assert all(isinstance(o, SceneObject) for o in back.objects)


def test_scene_lookups_and_reading_order() -> None:
    s = Scene("x", [SceneObject("star", "red", "large", 8), SceneObject("circle", "blue", "small", 0)])
    assert s.by_shape("star").cell == 8 and s.by_shape("cross") is None
    assert s.by_cell(0).shape == "circle" and s.by_cell(4) is None
    assert [o.shape for o in s.reading_order()] == ["circle", "star"]
    assert s.objects[0].position == "bottom right"


# --------------------------------------------------------------------------- render


def _colours(img) -> set[tuple[int, int, int]]:
    """The set of RGB colours in an image."""
    return {c for _, c in img.getcolors(maxcolors=1 << 20)}


def _centre(cell: int, image_size: int) -> tuple[int, int]:
    size = image_size / GRID
    return int((cell % GRID + 0.5) * size), int((cell // GRID + 0.5) * size)


def test_render_size_and_mode() -> None:
    s = World().scene(0)
    assert render(s).size == (96, 96)
    img = render(s, 48)
    assert img.size == (48, 48) and img.mode == "RGB"


def test_render_is_deterministic() -> None:
    # Same scene (even rebuilt from its dict) -> the same bytes; the jitter is seeded by the scene.
    s = World().scene(7)
    assert render(s).tobytes() == render(s).tobytes()
    assert render(Scene.from_dict(s.to_dict())).tobytes() == render(s).tobytes()
    # A different seed with the same objects moves the jitter, so bytes differ (the seed is used).
    moved = Scene(s.scene_id, s.objects, seed=s.seed + 1)
    assert render(moved).tobytes() != render(s).tobytes()


def test_object_colour_at_cell_centre_and_empty_cells_are_background() -> None:
    # Large square: half-side 0.85 * 0.40 cell = 0.34 cell; large circle: radius 0.40 cell.
    # The jitter is at most 0.5 * (0.5 - 0.40) cell = 0.05 cell, so the cell centre is always
    # inside the shape and the shape never leaves its cell (0.05 + 0.40 < 0.5).
    objs = [
        SceneObject("square", "red", "large", 0),
        SceneObject("circle", "blue", "large", 4),
        SceneObject("square", "yellow", "large", 8),  # shapes need not be distinct for render
    ]
    for seed in range(5):
        img = render(Scene("t", objs, seed=seed), 96)
        assert img.getpixel(_centre(0, 96)) == RGB["red"] == (220, 30, 30)
        assert img.getpixel(_centre(4, 96)) == RGB["blue"] == (40, 70, 220)
        assert img.getpixel(_centre(8, 96)) == RGB["yellow"] == (235, 215, 30)
        # Every pixel of an empty cell (here cells 1, 2, 3, 5, 6, 7) is background.
        for cell in (1, 2, 3, 5, 6, 7):
            x0, y0 = (cell % GRID) * 32, (cell // GRID) * 32
            crop = img.crop((x0, y0, x0 + 32, y0 + 32))
            assert _colours(crop) == {BACKGROUND}, f"cell {cell} not empty (seed {seed})"


def test_ring_is_hollow() -> None:
    # A large ring (outline width int(0.4 r) = 5 px at r = 12.8 px) leaves its centre as
    # background, while a point on its outline carries the colour: ring vs circle is a
    # shape distinction, not a colour one.
    img = render(Scene("t", [SceneObject("ring", "green", "large", 4)], seed=0), 96)
    assert img.getpixel(_centre(4, 96)) == BACKGROUND
    cell_pixels = _colours(img.crop((32, 32, 64, 64)))
    assert RGB["green"] in cell_pixels


def test_empty_scene_renders_all_background() -> None:
    img = render(Scene("empty", [], seed=0), 32)
    assert _colours(img) == {BACKGROUND}
