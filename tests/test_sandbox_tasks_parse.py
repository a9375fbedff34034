"""Tests for sandbox tasks (prompts and canonical answers) and the answer parser.

The sandbox metrics are exact only if every canonical answer parses back to exactly the
objects it was generated from, if negative claims are really false, and if anything the parser
cannot read is reported instead of silently dropped.
"""

from __future__ import annotations

import random
import re

import pytest

from rlaifv.sandbox.parse import Mention, parse_answer, parse_sentence, split_sentences
from rlaifv.sandbox.tasks import (
    DESCRIBE_PROMPT,
    claim_is_true,
    claim_question,
    claim_question_negative,
    describe,
    noisy_description,
    place,
    probe_question,
    sample_example,
    sentence,
)
from rlaifv.sandbox.world import COLOURS, GRID, POSITIONS, SHAPES, SIZES, SceneObject, World, WorldConfig

TASKS = ("describe", "count", "colour", "where", "probe", "claim")


def _key(x) -> tuple:
    return (x.shape, x.colour, x.size, x.cell)


# --------------------------------------------------------------------------- describe <-> parse


def test_describe_parses_back_to_the_objects_in_reading_order() -> None:
    # For 300 random scenes, the parsed mentions are exactly the objects (all four attributes),
    # in row-major cell order, one sentence per object, nothing unparsed.
    for s in World().scenes(300, "val"):
        parsed = parse_answer(describe(s.objects))
        assert [_key(m) for m in parsed.mentions] == [_key(o) for o in sorted(s.objects, key=lambda o: o.cell)]
        assert parsed.unparsed == []
        assert parsed.n_sentences == len(s.objects)


def test_describe_hand_written_text() -> None:
    # Objects given out of order; the description is in reading order (cell 2 before cell 4).
    objs = [SceneObject("star", "red", "large", 4), SceneObject("circle", "blue", "small", 2)]
    assert describe(objs) == "There is a small blue circle at the top right. There is a large red star in the center."


def test_center_phrasing() -> None:
    # The center cell reads "in the center", never "at the center"; other cells read "at the ...".
    assert place(4) == "in the center"
    assert place(0) == "at the top left" and place(8) == "at the bottom right"
    obj = SceneObject("triangle", "green", "small", 4)
    assert sentence(obj) == "There is a small green triangle in the center."
    m = parse_answer(sentence(obj)).mentions
    assert [_key(x) for x in m] == [("triangle", "green", "small", 4)]


def test_claim_question_hand_written() -> None:
    obj = SceneObject("star", "red", "large", 0)
    assert claim_question(obj) == "Is there a large red star at the top left? Please answer yes or no."
    assert claim_question(SceneObject("circle", "blue", "small", 4)) == (
        "Is there a small blue circle in the center? Please answer yes or no."
    )
    assert claim_question(obj, suffix="") == "Is there a large red star at the top left?"
    assert probe_question("cross") == "Is there a cross in the image? Please answer yes or no."


# --------------------------------------------------------------------------- noisy descriptions


def test_noisy_description_p1_adds_exactly_one_absent_object_preferring_a_companion() -> None:
    # p_extra=1 must add exactly one object, whose shape is absent from the scene, at an empty
    # cell; when some present shape has an absent companion, the extra is such a companion
    # (the co-occurrence hallucination).
    cfg = WorldConfig()
    rng = random.Random(0)
    n_companion_cases = 0
    for s in World(cfg).scenes(300, "val"):
        parsed = parse_answer(noisy_description(s, rng, cfg, p_extra=1.0))
        assert parsed.unparsed == []
        got = [_key(m) for m in parsed.mentions]
        truth = {_key(o) for o in s.objects}
        extras = [k for k in got if k not in truth]
        assert len(got) == len(s.objects) + 1 and len(extras) == 1
        assert truth <= set(got)
        shape, colour, size, cell = extras[0]
        assert shape not in s.shapes()
        assert s.by_cell(cell) is None
        assert colour in COLOURS and size in SIZES
        companions = {cfg.companion(x) for x in s.shapes()} - s.shapes()
        if companions:
            n_companion_cases += 1
            assert shape in companions
    assert n_companion_cases > 100  # the preference branch was really exercised


def test_noisy_description_p0_equals_describe() -> None:
    cfg = WorldConfig()
    rng = random.Random(1)
    for s in World(cfg).scenes(100):
        assert noisy_description(s, rng, cfg, p_extra=0.0) == describe(s.objects)


# --------------------------------------------------------------------------- negative claims


def test_claim_question_negative_is_always_false() -> None:
    # Every kind of negative (absent, wrong cell/colour/size, absent shape at an occupied cell)
    # must be false for the scene, else the labeler would be trained on wrong "No." answers.
    cfg = WorldConfig()
    rng = random.Random(2)
    for s in World(cfg).scenes(300, "test"):
        for _ in range(5):
            obj = claim_question_negative(s, rng, cfg)
            assert not claim_is_true(s, obj), (s.to_dict(), obj)
            assert obj.shape in SHAPES and obj.colour in COLOURS and obj.size in SIZES
            assert 0 <= obj.cell < GRID * GRID
    # and a present object is a true claim
    s = World(cfg).scene(0)
    assert all(claim_is_true(s, o) for o in s.objects)


# --------------------------------------------------------------------------- parser


def test_unparsed_sentences_are_reported() -> None:
    parsed = parse_answer("There is a large red circle at the top left. The sky is blue.")
    assert parsed.unparsed == ["The sky is blue."]
    assert parsed.n_sentences == 2
    assert [_key(m) for m in parsed.mentions] == [("circle", "red", "large", 0)]


def test_negation_is_parsed_but_not_a_mention() -> None:
    assert parse_sentence("There is no star.") == (True, None)
    parsed = parse_answer("There is no star. There is no small red cross at the bottom left.")
    assert parsed.mentions == [] and parsed.unparsed == [] and parsed.n_sentences == 2


def test_alternative_phrasing_parses() -> None:
    ok, m = parse_sentence("A red circle is at the top left.")
    assert ok
    assert m == Mention("circle", "red", None, 0, "A red circle is at the top left.")
    # attributes may be omitted: "There is a star." has no colour/size/cell
    ok, m = parse_sentence("There is a star.")
    assert ok and _key(m) == ("star", None, None, None)
    # case-insensitive, "an"/"one" articles, the center
    ok, m = parse_sentence("ONE large orange hexagon is in the center")
    assert ok and _key(m) == ("hexagon", "orange", "large", 4)


def test_unknown_shape_or_colour_is_unparsed() -> None:
    # Words outside the sandbox vocabulary must not be read as a mention.
    assert parse_sentence("There is a pink circle.") == (False, None)
    assert parse_sentence("There is a large red pentagon at the top left.") == (False, None)


def test_split_sentences() -> None:
    assert split_sentences("  A.  B!\nC?  ") == ["A.", "B!", "C?"]
    assert split_sentences("") == []


# --------------------------------------------------------------------------- sample_example

_PROBE = re.compile(r"^Is there a (\w+) in the image\? Please answer yes or no\.$")
_CLAIM = re.compile(r"^Is there a (\w+) (\w+) (\w+) (?:at the|in the) ([a-z ]+)\? Please answer yes or no\.$")


def test_sample_example_every_task_answers_from_ground_truth() -> None:
    # Each task gives a non-empty question and answer; yes/no tasks answer exactly "Yes." or
    # "No." and the answer agrees with the scene graph; the other tasks' answers are checked
    # against the scene too.
    cfg = WorldConfig()
    rng = random.Random(3)
    seen_yes_no = {"probe": set(), "claim": set()}
    for s in World(cfg).scenes(100):
        for task in TASKS:
            ex = sample_example(s, task, rng, cfg)
            assert ex.task == task and ex.scene is s
            assert ex.question.strip() and ex.answer.strip()
            if task == "probe":
                assert ex.answer in ("Yes.", "No.")
                shape = _PROBE.match(ex.question).group(1)
                assert (ex.answer == "Yes.") == (shape in s.shapes())
                seen_yes_no[task].add(ex.answer)
            elif task == "claim":
                assert ex.answer in ("Yes.", "No.")
                size, colour, shape, pos = _CLAIM.match(ex.question).groups()
                obj = SceneObject(shape, colour, size, POSITIONS.index(pos))
                assert (ex.answer == "Yes.") == claim_is_true(s, obj)
                seen_yes_no[task].add(ex.answer)
            elif task == "describe":
                assert ex.question == DESCRIBE_PROMPT and ex.answer == describe(s.objects)
            elif task == "count":
                n = len(s.objects)
                words = {1: "There is one object.", 2: "There are two objects.", 3: "There are three objects.",
                         4: "There are four objects.", 5: "There are five objects."}
                assert ex.answer == words[n]
            elif task == "colour":
                shape = re.match(r"^What colour is the (\w+)\?$", ex.question).group(1)
                assert ex.answer == f"The {shape} is {s.by_shape(shape).colour}."
            elif task == "where":
                shape = re.match(r"^Where is the (\w+)\?$", ex.question).group(1)
                assert ex.answer == f"The {shape} is {place(s.by_shape(shape).cell)}."
    assert seen_yes_no == {"probe": {"Yes.", "No."}, "claim": {"Yes.", "No."}}


def test_sample_example_unknown_task_raises() -> None:
    with pytest.raises(ValueError, match="unknown sandbox task 'caption'"):
        sample_example(World().scene(0), "caption", random.Random(0), WorldConfig())
