"""Sandbox tasks: prompts and canonical answers computed from the scene graph.

The sandbox language is small and regular so that every answer maps back to object mentions
exactly (see ``parse.py``):

* describe: "Describe the image in detail." -> one sentence per object in reading order,
  "There is a large red circle at the top left."
* count / colour / where: attribute and counting questions with one-sentence answers.
* probe: POPE-style "Is there a star in the image? Please answer yes or no." -> "Yes." / "No."
* claim question: what ``rlaifv ask`` makes of a sandbox claim, carrying the object's position:
  "Is there a large red circle at the top left? Please answer yes or no."
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .world import COLOURS, GRID, POSITIONS, SHAPES, SIZES, Scene, SceneObject, WorldConfig

DESCRIBE_PROMPT = "Describe the image in detail."
YES_NO_SUFFIX = "Please answer yes or no."
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Example:
    """A (scene, question, answer) triple for training or evaluation."""

    scene: Scene
    task: str
    question: str
    answer: str


def place(cell: int) -> str:
    """The prepositional phrase for a cell: "at the top left", "in the center"."""
    return "in the center" if POSITIONS[cell] == "center" else f"at the {POSITIONS[cell]}"


def object_phrase(obj: SceneObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def sentence(obj: SceneObject) -> str:
    return f"There is a {object_phrase(obj)} {place(obj.cell)}."


def describe(objects: list[SceneObject]) -> str:
    """The canonical detailed description: one sentence per object in reading order."""
    return " ".join(sentence(o) for o in sorted(objects, key=lambda o: o.cell))


def claim_question(obj: SceneObject, suffix: str = YES_NO_SUFFIX) -> str:
    """The polar question ``rlaifv ask`` makes of the claim ``sentence(obj)``."""
    q = f"Is there a {object_phrase(obj)} {place(obj.cell)}?"
    return f"{q} {suffix}" if suffix else q


def probe_question(shape: str, suffix: str = YES_NO_SUFFIX) -> str:
    q = f"Is there a {shape} in the image?"
    return f"{q} {suffix}" if suffix else q


def yes_no(flag: bool) -> str:
    return "Yes." if flag else "No."


def count_answer(n: int) -> str:
    return "There is one object." if n == 1 else f"There are {NUMBER_WORDS[n]} objects."


def hallucinated_object(scene: Scene, rng: random.Random, world: WorldConfig) -> SceneObject | None:
    """An absent object at an empty cell, preferring the companion of a present shape.

    This is the co-occurrence hallucination: the object the prior expects but the image lacks.
    Returns None when the grid is full or every shape is present.
    """
    empty = [c for c in range(GRID * GRID) if scene.by_cell(c) is None]
    present = scene.shapes()
    absent = [s for s in SHAPES if s not in present]
    if not empty or not absent:
        return None
    companions = [c for c in (world.companion(s) for s in present) if c and c not in present]
    shape = rng.choice(companions) if companions else rng.choice(absent)
    return SceneObject(shape=shape, colour=rng.choice(COLOURS), size=rng.choice(SIZES), cell=rng.choice(empty))


def noisy_description(scene: Scene, rng: random.Random, world: WorldConfig, p_extra: float, max_extra: int = 1) -> str:
    """A description that mentions up to ``max_extra`` absent objects, each with probability
    ``p_extra``, preferring the companions of present shapes (co-occurrence hallucination).

    Models the captions of real SFT data that mention objects not in the image; a policy
    trained on them hallucinates at a stable rate instead of only while under-trained.
    """
    objects = list(scene.objects)
    for _ in range(max_extra):
        if rng.random() < p_extra:
            extra = hallucinated_object(Scene(scene.scene_id, objects, scene.seed), rng, world)
            if extra is not None:
                objects.append(extra)
    return describe(objects)


def claim_question_negative(scene: Scene, rng: random.Random, world: WorldConfig) -> SceneObject:
    """A claim object that is false for ``scene``: one of the ways a description goes wrong."""
    kinds = ["absent", "wrong_cell", "wrong_colour", "wrong_size", "absent_occupied"]
    while True:
        kind = rng.choice(kinds)
        if kind == "absent":
            obj = hallucinated_object(scene, rng, world)
            if obj is not None:
                return obj
        elif kind == "absent_occupied":
            absent = [s for s in SHAPES if s not in scene.shapes()]
            if absent:
                o = rng.choice(scene.objects)
                return SceneObject(rng.choice(absent), o.colour, o.size, o.cell)
        else:
            o = rng.choice(scene.objects)
            if kind == "wrong_cell":
                cells = [c for c in range(GRID * GRID) if c != o.cell]
                return SceneObject(o.shape, o.colour, o.size, rng.choice(cells))
            if kind == "wrong_colour":
                return SceneObject(o.shape, rng.choice([c for c in COLOURS if c != o.colour]), o.size, o.cell)
            return SceneObject(o.shape, o.colour, "small" if o.size == "large" else "large", o.cell)


def what_at(scene: Scene, cell: int) -> str:
    """What the cell holds, as a sentence: "There is a small blue star at the top left." or
    "There is nothing at the top left." (the grounding answer of the ``what_at`` task)."""
    obj = scene.by_cell(cell)
    return sentence(obj) if obj is not None else f"There is nothing {place(cell)}."


def claim_answer(scene: Scene, obj: SceneObject, explain: bool) -> str:
    """"Yes."/"No." for a claim question; with ``explain``, followed by what the asked cell
    really holds. The first token decides (p_yes vs p_no); the explanation gives training a
    dense signal for the lookup that decision needs."""
    head = yes_no(claim_is_true(scene, obj))
    return f"{head} {what_at(scene, obj.cell)}" if explain else head


def claim_is_true(scene: Scene, obj: SceneObject) -> bool:
    """True iff the scene holds exactly this object (shape, colour, size, cell)."""
    return obj in scene.objects


def sample_example(
    scene: Scene, task: str, rng: random.Random, world: WorldConfig, p_extra: float = 0.0, explain: bool = False, max_extra: int = 1
) -> Example:
    """Draw one training/eval example of the given task for a scene."""
    if task == "describe":
        return Example(scene, task, DESCRIBE_PROMPT, noisy_description(scene, rng, world, p_extra, max_extra))
    if task == "count":
        return Example(scene, task, "How many objects are there?", count_answer(len(scene.objects)))
    if task == "colour":
        o = rng.choice(scene.objects)
        return Example(scene, task, f"What colour is the {o.shape}?", f"The {o.shape} is {o.colour}.")
    if task == "where":
        o = rng.choice(scene.objects)
        return Example(scene, task, f"Where is the {o.shape}?", f"The {o.shape} is {place(o.cell)}.")
    if task == "probe":
        if rng.random() < 0.5:
            return Example(scene, task, probe_question(rng.choice(scene.objects).shape), yes_no(True))
        absent = [s for s in SHAPES if s not in scene.shapes()]
        comps = [c for c in (world.companion(s) for s in scene.shapes()) if c in absent]
        shape = rng.choice(comps) if comps and rng.random() < 0.5 else rng.choice(absent)
        return Example(scene, task, probe_question(shape), yes_no(False))
    if task == "what_at":
        cell = rng.randrange(GRID * GRID)
        return Example(scene, task, f"What is {place(cell)}?", what_at(scene, cell))
    if task == "what_at_short":  # content first: the lookup happens at the answer position
        cell = rng.randrange(GRID * GRID)
        obj = scene.by_cell(cell)
        ans = f"{obj.size.capitalize()} {obj.colour} {obj.shape}." if obj else "Nothing."
        return Example(scene, task, f"What is {place(cell)}?", ans)
    if task == "claim":
        obj = rng.choice(scene.objects) if rng.random() < 0.5 else claim_question_negative(scene, rng, world)
        return Example(scene, task, claim_question(obj), claim_answer(scene, obj, explain))
    raise ValueError(f"unknown sandbox task {task!r}")
