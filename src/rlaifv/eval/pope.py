"""POPE-style object probing on sandbox scenes.

POPE (Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP
2023) asks polar questions "Is there a <object> in the image?" about objects that are present
("yes") and absent ("no"), and scores the yes/no answers as a binary classification. The
absent objects are drawn in three ways, from easy to hard:

* ``random``: uniformly among the absent categories;
* ``popular``: the most frequent categories of the dataset first (a model that answers from
  the frequency prior says "yes" to them);
* ``adversarial``: the categories that co-occur with the present ones first (a model that
  answers from the co-occurrence prior says "yes" to them). In the sandbox the co-occurrence
  is exact: the companion of a present shape (``WorldConfig.companion``).

Per scene this module asks one "yes" question per present shape and the same number of "no"
questions (fewer when fewer shapes are absent), without replacement, so every split is
balanced up to full scenes. Questions use the sandbox wording :func:`probe_question`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

from rlaifv.sandbox.tasks import probe_question
from rlaifv.sandbox.world import SHAPES, Scene, WorldConfig

from .chair import ratio

Split = Literal["random", "popular", "adversarial"]
SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Probe:
    """One POPE question: is ``shape`` in scene ``scene_id``? ``label`` is the true answer."""

    scene_id: str
    shape: str
    label: bool
    question: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shape_frequency(scenes: Sequence[Scene]) -> Counter[str]:
    """Number of the given scenes that contain each shape (POPE's "popular" statistic)."""
    return Counter(s for scene in scenes for s in scene.shapes())


def popular_order(scenes: Sequence[Scene]) -> list[str]:
    """All shapes, most frequent in ``scenes`` first; ties broken by the order of SHAPES."""
    freq = shape_frequency(scenes)
    return sorted(SHAPES, key=lambda s: (-freq[s], SHAPES.index(s)))


def negative_shapes(
    scene: Scene,
    k: int,
    split: str,
    rng: random.Random,
    popular: Sequence[str],
    world: WorldConfig = WorldConfig(),
) -> list[str]:
    """``k`` (or fewer, if fewer are absent) distinct absent shapes for one scene, by split."""
    present = scene.shapes()
    absent = [s for s in SHAPES if s not in present]
    k = min(k, len(absent))
    if split == "random":
        return rng.sample(absent, k)
    ranked = [s for s in popular if s not in present]
    if split == "popular":
        return ranked[:k]
    if split == "adversarial":
        companions = {world.companion(s) for s in present} - present - {None}
        first = [s for s in ranked if s in companions]
        rest = [s for s in ranked if s not in companions]
        return (first + rest)[:k]
    raise ValueError(f"unknown POPE split {split!r}; expected one of {SPLITS}")


def pope_questions(
    scenes: Sequence[Scene],
    split: Split = "random",
    seed: int = 0,
    world: WorldConfig = WorldConfig(),
) -> list[Probe]:
    """POPE probes for ``scenes``: per scene, yes-probes for every present shape (in SHAPES
    order), then as many no-probes as possible (up to the same number) chosen by ``split``.

    ``popular`` ranks shapes by how many of the given ``scenes`` contain them; ``seed`` only
    affects ``random`` (one RNG shared across scenes, so the output is a pure function of the
    arguments).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; expected one of {SPLITS}")
    rng = random.Random(seed)
    popular = popular_order(scenes)
    probes: list[Probe] = []
    for scene in scenes:
        present = [s for s in SHAPES if s in scene.shapes()]
        probes += [Probe(scene.scene_id, s, True, probe_question(s)) for s in present]
        for s in negative_shapes(scene, len(present), split, rng, popular, world):
            probes.append(Probe(scene.scene_id, s, False, probe_question(s)))
    return probes


_NON_LETTERS = re.compile(r"[^a-z]+")


def parse_yes_no(text: str) -> bool | None:
    """True for "yes", False for "no" as the first word (case and punctuation ignored), else None.

    POPE's reference scorer searches the whole answer for "no"/"not"; the sandbox answers are
    "Yes." / "No.", so a strict first-word rule is enough and never guesses: anything else is
    None (unparsable), which the caller counts rather than silently mapping to an answer.
    """
    words = text.split()
    if not words:
        return None
    first = _NON_LETTERS.sub("", words[0].lower())
    return {"yes": True, "no": False}.get(first)


def pope_metrics(predictions: Sequence[bool | None], labels: Sequence[bool]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 ("yes" is the positive class) and yes-ratio, as in POPE.

    A ratio with a zero denominator is 0.0. A None prediction (an answer
    :func:`parse_yes_no` could not read) counts as "not yes", i.e. a negative prediction, and
    is reported in ``n_invalid``. Keys: accuracy, precision, recall, f1, yes_ratio, n, tp, fp,
    tn, fn, n_invalid.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_metrics: {len(predictions)} predictions but {len(labels)} labels")
    tp = sum(1 for p, y in zip(predictions, labels) if p is True and y)
    fp = sum(1 for p, y in zip(predictions, labels) if p is True and not y)
    fn = sum(1 for p, y in zip(predictions, labels) if p is not True and y)
    tn = sum(1 for p, y in zip(predictions, labels) if p is not True and not y)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    n = len(labels)
    return {
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(tp + fp, n),
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_invalid": sum(1 for p in predictions if p is None),
    }
