"""Sandbox CHAIR metrics on hand-built scenes and answers (expected values computed by hand)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from rlaifv.eval.chair import answer_chair, chair_metrics, dedup_mentions, ratio
from rlaifv.eval.report import print_table, write_json
from rlaifv.sandbox.parse import Mention
from rlaifv.sandbox.tasks import describe
from rlaifv.sandbox.world import Scene, SceneObject, World, WorldConfig

# Default companions: circle-square, triangle-diamond, star-cross, ring-hexagon.
SCENE_A = Scene("a", [SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4)])
SCENE_B = Scene("b", [SceneObject("triangle", "green", "large", 8)])
SCENE_C = Scene("c", [SceneObject("hexagon", "yellow", "small", 2), SceneObject("ring", "purple", "large", 6)])

ANSWER_A = (
    "There is a large red circle at the top left. "  # circle: correct, no error (10 words)
    "There is a small green star in the center. "  # star: correct, colour error (9 words)
    "There is a large square at the bottom right. "  # square: hallucinated, companion of circle (9)
    "There is a blue circle. "  # second circle mention: deduplicated away (5 words)
    "The sky is pretty."  # unparsed (4 words)
)
ANSWER_B = "There is a triangle. There is no diamond."  # triangle correct; negation: no mention (4+4)
ANSWER_C = "I cannot tell."  # unparsed, no mention (3 words)
ANSWER_D = (
    "There is a large purple diamond at the top right. "  # hallucinated, not a companion of circle/star (10)
    "There is a large blue star at the top left."  # star: size error + position error (10 words)
)


@pytest.fixture
def metrics() -> dict:
    return chair_metrics([ANSWER_A, ANSWER_B, ANSWER_C, ANSWER_D], [SCENE_A, SCENE_B, SCENE_C, SCENE_A], details=True)


def test_counts(metrics: dict) -> None:
    assert metrics["n_answers"] == 4
    assert metrics["n_mentions"] == 6  # A: circle, star, square; B: triangle; C: -; D: diamond, star
    assert metrics["n_hallucinated_mentions"] == 2  # square (A), diamond (D)
    assert metrics["n_correct_mentions"] == 4  # circle, star (A); triangle (B); star (D)
    assert metrics["n_answers_with_mentions"] == 3  # A, B, D
    assert metrics["n_hallucinated_answers"] == 2  # A, D


def test_chair(metrics: dict) -> None:
    assert metrics["chair_i"] == pytest.approx(2 / 6)  # 2 hallucinated / 6 mentions
    assert metrics["chair_s"] == pytest.approx(2 / 3)  # A, D / answers with mentions A, B, D
    assert metrics["chair_s_all"] == pytest.approx(2 / 4)  # A, D / all 4 answers


def test_recall(metrics: dict) -> None:
    # per answer: A 2/2, B 1/1, C 0/2, D 1/2 (star only) -> (1 + 1 + 0 + 0.5) / 4
    assert metrics["recall"] == pytest.approx(2.5 / 4)
    # micro: (2 + 1 + 0 + 1) / (2 + 1 + 2 + 2)
    assert metrics["recall_micro"] == pytest.approx(4 / 7)


def test_attribute_errors(metrics: dict) -> None:
    # among the 4 correct mentions: star(A) colour; star(D) size + cell -> 2 mentions with errors
    assert metrics["attr_error_rate"] == pytest.approx(2 / 4)
    assert metrics["colour_error_rate"] == pytest.approx(1 / 4)  # green vs blue
    assert metrics["size_error_rate"] == pytest.approx(1 / 4)  # large vs small
    assert metrics["position_error_rate"] == pytest.approx(1 / 4)  # top left (0) vs center (4)


def test_companion_length_unparsed(metrics: dict) -> None:
    assert metrics["hallucinated_companion_rate"] == pytest.approx(1 / 2)  # square yes, diamond no
    assert metrics["avg_length"] == pytest.approx((37 + 8 + 3 + 20) / 4)  # A: 10+9+9+5+4
    assert metrics["n_sentences"] == 10  # 5 + 2 + 1 + 2
    assert metrics["unparsed_sentences"] == 2  # "The sky is pretty.", "I cannot tell."
    assert metrics["unparsed_rate"] == pytest.approx(2 / 10)


def test_per_answer_details_and_json(metrics: dict) -> None:
    a, b, c, d = metrics["per_answer"]
    assert a["mentioned"] == ["circle", "star", "square"]
    assert a["hallucinated"] == ["square"] and a["companion_hallucinated"] == ["square"]
    assert a["colour_errors"] == ["star"] and a["unparsed"] == ["The sky is pretty."]
    assert b["mentioned"] == ["triangle"] and c["mentioned"] == []
    assert d["size_errors"] == ["star"] and d["position_errors"] == ["star"]
    json.dumps(metrics)  # JSON-serialisable


def test_dedup_first_mention_counts() -> None:
    ms = [Mention("circle", "red"), Mention("star"), Mention("circle", "blue")]
    assert dedup_mentions(ms) == [Mention("circle", "red"), Mention("star")]
    # a repeated hallucination counts once: 1 mention, 1 hallucinated
    m = chair_metrics(["There is a square. There is a square at the top left."], [SCENE_A])
    assert (m["n_mentions"], m["chair_i"], m["chair_s"]) == (1, 1.0, 1.0)
    # repeated correct shape with a wrong colour the second time: only the first (right) one counts
    r = answer_chair("There is a red circle. There is a green circle.", SCENE_A)
    assert r.mentioned == ["circle"] and r.colour_errors == []


def test_zero_denominators() -> None:
    empty = chair_metrics([], [])
    assert empty["n_answers"] == 0
    assert all(empty[k] == 0.0 for k in ("chair_i", "chair_s", "chair_s_all", "recall", "recall_micro",
                                          "attr_error_rate", "hallucinated_companion_rate", "avg_length",
                                          "unparsed_rate"))
    # answers without mentions: CHAIR_s over answers-with-mentions is 0/0 -> 0.0, CHAIR_s_all 0/2
    m = chair_metrics(["No idea.", ""], [SCENE_A, Scene("empty", [])])
    assert m["chair_s"] == 0.0 and m["chair_s_all"] == 0.0 and m["chair_i"] == 0.0
    assert m["recall"] == 0.0  # A: 0/2; the empty scene is left out of the mean -> 0 / 1
    assert m["n_sentences"] == 1 and m["unparsed_rate"] == 1.0  # "" has no sentences
    assert ratio(0, 0) == 0.0 and ratio(1, 4) == 0.25


def test_length_mismatch() -> None:
    with pytest.raises(ValueError):
        chair_metrics(["x"], [])


def test_canonical_descriptions_are_perfect() -> None:
    scenes = World().scenes(30, "test")
    m = chair_metrics([describe(s.objects) for s in scenes], scenes)
    assert m["chair_i"] == 0.0 and m["chair_s"] == 0.0
    assert m["recall"] == 1.0 and m["attr_error_rate"] == 0.0 and m["unparsed_sentences"] == 0
    assert m["n_mentions"] == sum(len(s.objects) for s in scenes)


def test_companion_uses_given_world() -> None:
    # with circle-diamond as a pair, a hallucinated diamond next to a circle is a companion
    world = WorldConfig(pairs=(("circle", "diamond"),))
    assert chair_metrics([ANSWER_D], [SCENE_A], world=world)["hallucinated_companion_rate"] == 1.0
    assert chair_metrics([ANSWER_D], [SCENE_A])["hallucinated_companion_rate"] == 0.0


def test_report(tmp_path, metrics: dict) -> None:
    console = Console(record=True, width=120)
    rows = [{"model": "m", **{k: metrics[k] for k in ("chair_s", "chair_i", "n_answers")}}]
    print_table("CHAIR", rows, ["model", "chair_s", "chair_i", "n_answers", "missing"], console=console)
    text = console.export_text()
    assert "0.667" in text and "0.333" in text and "CHAIR" in text
    path = write_json(tmp_path / "sub" / "m.json", {"metrics": metrics, "shapes": {"star", "circle"}})
    loaded = json.loads(path.read_text())
    assert loaded["metrics"]["chair_i"] == pytest.approx(1 / 3) and loaded["shapes"] == ["circle", "star"]
