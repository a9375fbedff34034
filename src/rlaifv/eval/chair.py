"""CHAIR and related object-hallucination metrics on sandbox answers (exact ground truth).

This is the sandbox counterpart of Object HalBench, the headline hallucination benchmark of
RLAIF-V (Yu et al., CVPR 2025, Sec. 4): CHAIR (Rohrbach et al., "Object Hallucination in Image
Captioning", EMNLP 2018) counts the objects an answer mentions that are not in the image.
Here the "objects" are sandbox shapes (a shape is the category of an object, as a COCO class
is for CHAIR) and mentions come from :func:`rlaifv.sandbox.parse.parse_answer`, so no
synonym list or NLP heuristic sits between the answer and the ground truth.

Definitions (all ratios with a zero denominator are defined as 0.0):

* Mentions are deduplicated per answer by shape: the first mention of a shape counts, later
  ones are ignored (COCO CHAIR likewise counts each object class once per response).
* ``chair_i`` = hallucinated mentions / all mentions; a mention is hallucinated iff its shape
  is not in the scene.
* ``chair_s`` = answers with >= 1 hallucinated mention / answers with >= 1 mention (the
  Object HalBench headline, ``CHAIRs_refine`` in the RLAIF-V evaluation code);
  ``chair_s_all`` divides by all answers instead (the original CHAIR_s).
* ``recall`` = mean over answers of (distinct correctly mentioned shapes / scene shapes);
  scenes without objects are left out of the mean. ``recall_micro`` = sum / sum (the
  ``obj_rec`` of the RLAIF-V evaluation code).
* Attribute errors are counted among the mentions of present shapes only (a hallucinated
  object has no true attributes): a stated colour, size or cell that disagrees with the ground
  truth object is an error; an attribute the sentence does not state (None) is not.
  ``attr_error_rate`` is the share of such mentions with at least one error; the
  per-attribute rates share the same denominator, so they are directly comparable.
* ``hallucinated_companion_rate`` = share of hallucinated mentions whose shape is the
  co-occurrence companion of a shape present in the scene: the hallucination mechanism the
  sandbox world is built to provoke (see ``rlaifv.sandbox.world``).
* Sentences the parser cannot read are counted (``unparsed_sentences``) and reported as a
  share of all sentences (``unparsed_rate``), never dropped silently: a high rate means the
  CHAIR numbers above describe only part of the text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from rlaifv.sandbox.parse import Mention, parse_answer
from rlaifv.sandbox.world import Scene, WorldConfig


def ratio(num: float, den: float) -> float:
    """num / den, with 0/0 (and x/0) defined as 0.0 so that empty inputs give finite metrics."""
    return float(num) / den if den else 0.0


def dedup_mentions(mentions: Sequence[Mention]) -> list[Mention]:
    """Keep the first mention of each shape, in order (CHAIR counts a class once per answer)."""
    seen: set[str] = set()
    out: list[Mention] = []
    for m in mentions:
        if m.shape not in seen:
            seen.add(m.shape)
            out.append(m)
    return out


@dataclass
class AnswerChair:
    """Per-answer CHAIR bookkeeping; :func:`chair_metrics` aggregates these."""

    scene_id: str
    n_words: int
    n_sentences: int
    unparsed: list[str] = field(default_factory=list)
    mentioned: list[str] = field(default_factory=list)  # deduplicated shapes, in order
    hallucinated: list[str] = field(default_factory=list)
    correct: list[str] = field(default_factory=list)
    n_gt: int = 0
    companion_hallucinated: list[str] = field(default_factory=list)
    colour_errors: list[str] = field(default_factory=list)  # shapes whose stated colour is wrong
    size_errors: list[str] = field(default_factory=list)
    position_errors: list[str] = field(default_factory=list)

    @property
    def attr_error_shapes(self) -> set[str]:
        return set(self.colour_errors) | set(self.size_errors) | set(self.position_errors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_chair(answer: str, scene: Scene, world: WorldConfig = WorldConfig()) -> AnswerChair:
    """Score one answer against its scene: mentions, hallucinations and attribute errors."""
    parsed = parse_answer(answer)
    present = scene.shapes()
    out = AnswerChair(
        scene_id=scene.scene_id,
        n_words=len(answer.split()),
        n_sentences=parsed.n_sentences,
        unparsed=list(parsed.unparsed),
        n_gt=len(present),
    )
    for m in dedup_mentions(parsed.mentions):
        out.mentioned.append(m.shape)
        obj = scene.by_shape(m.shape)
        if obj is None:
            out.hallucinated.append(m.shape)
            if world.companion(m.shape) in present:
                out.companion_hallucinated.append(m.shape)
            continue
        out.correct.append(m.shape)
        if m.colour is not None and m.colour != obj.colour:
            out.colour_errors.append(m.shape)
        if m.size is not None and m.size != obj.size:
            out.size_errors.append(m.shape)
        if m.cell is not None and m.cell != obj.cell:
            out.position_errors.append(m.shape)
    return out


def aggregate(per_answer: Sequence[AnswerChair]) -> dict[str, Any]:
    """Aggregate per-answer records into the CHAIR metric dict (see the module docstring)."""
    n_answers = len(per_answer)
    n_mentions = sum(len(a.mentioned) for a in per_answer)
    n_hall = sum(len(a.hallucinated) for a in per_answer)
    n_correct = sum(len(a.correct) for a in per_answer)
    with_mentions = [a for a in per_answer if a.mentioned]
    n_hall_answers = sum(1 for a in per_answer if a.hallucinated)
    with_gt = [a for a in per_answer if a.n_gt]
    n_sent = sum(a.n_sentences for a in per_answer)
    n_unparsed = sum(len(a.unparsed) for a in per_answer)
    n_colour = sum(len(a.colour_errors) for a in per_answer)
    n_size = sum(len(a.size_errors) for a in per_answer)
    n_pos = sum(len(a.position_errors) for a in per_answer)
    n_attr = sum(len(a.attr_error_shapes) for a in per_answer)
    n_comp = sum(len(a.companion_hallucinated) for a in per_answer)
    return {
        "n_answers": n_answers,
        "n_answers_with_mentions": len(with_mentions),
        "n_hallucinated_answers": n_hall_answers,
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hall,
        "n_correct_mentions": n_correct,
        "chair_i": ratio(n_hall, n_mentions),
        "chair_s": ratio(n_hall_answers, len(with_mentions)),
        "chair_s_all": ratio(n_hall_answers, n_answers),
        "recall": ratio(sum(len(a.correct) / a.n_gt for a in with_gt), len(with_gt)),
        "recall_micro": ratio(n_correct, sum(a.n_gt for a in per_answer)),
        "attr_error_rate": ratio(n_attr, n_correct),
        "colour_error_rate": ratio(n_colour, n_correct),
        "size_error_rate": ratio(n_size, n_correct),
        "position_error_rate": ratio(n_pos, n_correct),
        "hallucinated_companion_rate": ratio(n_comp, n_hall),
        "avg_length": ratio(sum(a.n_words for a in per_answer), n_answers),
        "n_sentences": n_sent,
        "unparsed_sentences": n_unparsed,
        "unparsed_rate": ratio(n_unparsed, n_sent),
    }


def chair_metrics(
    answers: Sequence[str],
    scenes: Sequence[Scene],
    world: WorldConfig = WorldConfig(),
    details: bool = False,
) -> dict[str, Any]:
    """CHAIR_i / CHAIR_s, recall, attribute errors and parse coverage of sandbox answers.

    ``answers[i]`` is scored against ``scenes[i]``. Returns a flat JSON-serialisable dict
    (keys listed in :func:`aggregate`); with ``details=True`` it also holds ``"per_answer"``,
    a list of :class:`AnswerChair` dicts (mentioned / hallucinated shapes, errors, unparsed).
    """
    if len(answers) != len(scenes):
        raise ValueError(f"chair_metrics: {len(answers)} answers but {len(scenes)} scenes")
    per_answer = [answer_chair(a, s, world) for a, s in zip(answers, scenes)]
    out = aggregate(per_answer)
    if details:
        out["per_answer"] = [a.to_dict() for a in per_answer]
    return out
