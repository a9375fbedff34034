"""POPE probes and metrics on hand-built scenes (expected values computed by hand)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from rlaifv.eval.pope import Probe, parse_yes_no, pope_metrics, pope_questions, popular_order
from rlaifv.sandbox.tasks import probe_question
from rlaifv.sandbox.world import SHAPES, Scene, SceneObject, World


def _scene(sid: str, *shapes: str) -> Scene:
    return Scene(sid, [SceneObject(s, "red", "small", i) for i, s in enumerate(shapes)])


# Companions (default world): circle-square, triangle-diamond, star-cross, ring-hexagon.
SCENES = [
    _scene("s1", "star", "circle"),
    _scene("s2", "circle", "triangle"),
    _scene("s3", "hexagon", "circle"),
    _scene("s4", "circle", "square", "star"),
]
# Scene frequencies: circle 4, star 2 (s1, s4), square 1, triangle 1, hexagon 1, others 0.
# Popular order (ties by SHAPES order): circle, star, square, triangle, hexagon, diamond, cross, ring.
POPULAR = ["circle", "star", "square", "triangle", "hexagon", "diamond", "cross", "ring"]


def _negatives(probes: list[Probe]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for p in probes:
        if not p.label:
            out[p.scene_id].append(p.shape)
    return dict(out)


def test_popular_order() -> None:
    assert popular_order(SCENES) == POPULAR


def test_yes_probes_all_present_shapes() -> None:
    probes = pope_questions(SCENES, "popular")
    yes = [(p.scene_id, p.shape) for p in probes if p.label]
    # present shapes per scene in SHAPES order
    assert yes == [("s1", "circle"), ("s1", "star"), ("s2", "circle"), ("s2", "triangle"),
                   ("s3", "circle"), ("s3", "hexagon"), ("s4", "circle"), ("s4", "square"), ("s4", "star")]
    assert all(p.question == probe_question(p.shape) for p in probes)
    assert probes[0].question == "Is there a circle in the image? Please answer yes or no."
    assert len(probes) == 18  # 9 yes + 9 no (every scene has enough absent shapes)


def test_popular_split() -> None:
    assert _negatives(pope_questions(SCENES, "popular")) == {
        "s1": ["square", "triangle"],  # absent by popularity: square, triangle, hexagon, ...
        "s2": ["star", "square"],  # circle, triangle present
        "s3": ["star", "square"],
        "s4": ["triangle", "hexagon", "diamond"],  # 3 present -> 3 negatives
    }


def test_adversarial_split() -> None:
    assert _negatives(pope_questions(SCENES, "adversarial")) == {
        "s1": ["square", "cross"],  # companions of circle, star (both absent), by popularity
        "s2": ["square", "diamond"],  # companions of circle, triangle
        "s3": ["square", "ring"],  # companions of circle, hexagon
        "s4": ["cross", "triangle", "hexagon"],  # square present: only cross, then popular fill
    }


def test_random_split() -> None:
    probes = pope_questions(SCENES, "random", seed=3)
    assert probes == pope_questions(SCENES, "random", seed=3)  # deterministic in the seed
    for scene in SCENES:
        neg = _negatives(probes)[scene.scene_id]
        assert len(neg) == len(scene.objects) == len(set(neg))  # balanced, without replacement
        assert not set(neg) & scene.shapes()
    # over many scenes and seeds, every absent shape gets drawn (uniform, not a fixed order)
    scenes = World().scenes(50, "val")
    drawn = {p.shape for seed in range(3) for p in pope_questions(scenes, "random", seed) if not p.label}
    assert drawn == set(SHAPES)


def test_fewer_absent_than_present() -> None:
    full = _scene("f", "circle", "square", "triangle", "diamond", "star")  # absent: cross, ring, hexagon
    for split in ("random", "popular", "adversarial"):
        neg = _negatives(pope_questions([full], split))["f"]
        assert sorted(neg) == ["cross", "hexagon", "ring"]  # all 3 absent shapes, no repeats
    # adversarial: cross (companion of star) first; rest tie at frequency 0 -> SHAPES order
    assert _negatives(pope_questions([full], "adversarial"))["f"] == ["cross", "ring", "hexagon"]


def test_unknown_split() -> None:
    with pytest.raises(ValueError):
        pope_questions(SCENES, "hard")  # type: ignore[arg-type]


def test_probe_json() -> None:
    json.dumps([p.to_dict() for p in pope_questions(SCENES)])


def test_pope_metrics() -> None:
    preds = [True, True, False, False, True, None]
    labels = [True, False, False, True, True, False]
    m = pope_metrics(preds, labels)
    # tp: #0, #4 = 2; fp: #1 = 1; tn: #2, #5 (None counts as "no") = 2; fn: #3 = 1
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"], m["n_invalid"]) == (2, 1, 2, 1, 6, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)  # (2 + 2) / 6
    assert m["precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["recall"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["f1"] == pytest.approx(2 / 3)  # 2 * (2/3)(2/3) / (4/3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)  # 3 "yes" predictions


def test_pope_metrics_zero_denominators() -> None:
    m = pope_metrics([False, False], [False, False])  # no positives predicted or present
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0  # 0/0 -> 0.0
    assert m["accuracy"] == 1.0 and m["yes_ratio"] == 0.0  # 2/2 correct, 0/2 yes
    e = pope_metrics([], [])
    assert e["n"] == 0 and e["accuracy"] == 0.0 and e["f1"] == 0.0
    with pytest.raises(ValueError):
        pope_metrics([True], [])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", True), ("no", False), ("NO, there is not.", False), ("  yes!", True), ("**Yes**", True),
        ("Yesterday I saw it.", None), ("Maybe.", None), ("", None), ("There is no star.", None),
    ],
)
def test_parse_yes_no(text: str, expected: bool | None) -> None:
    assert parse_yes_no(text) is expected
