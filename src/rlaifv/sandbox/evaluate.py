"""Evaluate a VLM on held-out sandbox scenes: descriptions (CHAIR), POPE probes, claim questions.

* Descriptions: "Describe the image in detail." answered greedily and by sampling (temperature
  0.7, the method's sampling setting), scored with CHAIR_i / CHAIR_s / recall / attribute errors.
* POPE: "Is there a <shape> in the image?" in random, popular and adversarial splits, answered
  through p_yes vs p_no of the first answer token (the same read-out as the labeler).
* Claim questions: the position-carrying questions ``rlaifv ask`` makes of sandbox claims, one
  true claim per scene and one false claim of each kind (absent co-occurring object, present
  object at a wrong cell, wrong colour, wrong size, absent object at an occupied cell): the
  labeler's accuracy / F1 with "yes" = claim accepted.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..eval.chair import chair_metrics
from ..eval.pope import SPLITS, pope_metrics, pope_questions
from ..models.generate import generate_answers, score_yes_no
from . import standins  # noqa: F401  (registers the stand-in claim modes, see claim_modes)
from .render import render
from .tasks import DESCRIBE_PROMPT, claim_question, hallucinated_object, sentence
from .world import COLOURS, GRID, SHAPES, Scene, SceneObject, World, WorldConfig

NEGATIVE_KINDS = ("absent_companion", "wrong_cell", "wrong_colour", "wrong_size", "absent_occupied")


@dataclass
class SandboxEvalConfig:
    """What ``rlaifv eval`` measures on the sandbox."""

    n_scenes: int = 200
    split: str = "test"
    #: first scene index of the slice (e.g. 10000: test scenes no recipe was tuned on)
    start: int = 0
    seed: int = 0
    temperature: float = 0.7
    max_new_tokens: int = 96
    describe: bool = True
    greedy: bool = True  # also describe greedily (False: sampled only, e.g. for fast checkpoint selection)
    pope: bool = True
    claims: bool = True
    #: how claim questions are judged: "direct" (the method's labeler) and/or the sandbox-only
    #: stand-ins "describe_then_answer" / "describe_then_match" (see sandbox/standins.py)
    claim_modes: tuple[str, ...] = ("direct",)
    batch_size: int = 50


def claim_probe_set(scenes: list[Scene], world: WorldConfig, seed: int = 0) -> list[tuple[Scene, SceneObject, bool, str]]:
    """(scene, claimed object, is_true, kind): per scene one true claim and one of each false kind."""
    rng = random.Random(seed)
    out: list[tuple[Scene, SceneObject, bool, str]] = []
    for s in scenes:
        out.append((s, rng.choice(s.objects), True, "true"))
        for kind in NEGATIVE_KINDS:
            obj = _negative(s, kind, rng, world)
            if obj is not None:
                out.append((s, obj, False, kind))
    return out


def _negative(s: Scene, kind: str, rng: random.Random, world: WorldConfig) -> SceneObject | None:
    o = rng.choice(s.objects)
    if kind == "absent_companion":
        comps = [c for c in (world.companion(x) for x in s.shapes()) if c and c not in s.shapes()]
        empty = [c for c in range(GRID * GRID) if s.by_cell(c) is None]
        if not comps or not empty:
            return hallucinated_object(s, rng, world)
        return SceneObject(rng.choice(comps), rng.choice(COLOURS), rng.choice(("small", "large")), rng.choice(empty))
    if kind == "wrong_cell":
        return SceneObject(o.shape, o.colour, o.size, rng.choice([c for c in range(GRID * GRID) if c != o.cell]))
    if kind == "wrong_colour":
        return SceneObject(o.shape, rng.choice([c for c in COLOURS if c != o.colour]), o.size, o.cell)
    if kind == "wrong_size":
        return SceneObject(o.shape, o.colour, "small" if o.size == "large" else "large", o.cell)
    absent = [x for x in SHAPES if x not in s.shapes()]
    return SceneObject(rng.choice(absent), o.colour, o.size, o.cell) if absent else None


def evaluate_descriptions(model, processor, scenes, images, cfg: SandboxEvalConfig, world: WorldConfig) -> dict[str, Any]:
    q = [DESCRIBE_PROMPT] * len(scenes)
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    sampled = generate_answers(model, processor, images, q, do_sample=True, temperature=cfg.temperature, seed=cfg.seed, **kw)
    out: dict[str, Any] = {"sampled": chair_metrics(sampled, scenes, world)}
    greedy = generate_answers(model, processor, images, q, do_sample=False, **kw) if cfg.greedy else [None] * len(scenes)
    if cfg.greedy:
        out["greedy"] = chair_metrics(greedy, scenes, world)
    out["examples"] = [{"scene": s.to_dict(), "greedy": g, "sampled": a} for s, g, a in list(zip(scenes, greedy, sampled))[:5]]
    return out


def evaluate_pope(model, processor, scenes, images, cfg: SandboxEvalConfig, world: WorldConfig) -> dict[str, Any]:
    by_id = {s.scene_id: im for s, im in zip(scenes, images)}
    out: dict[str, Any] = {}
    for split in SPLITS:
        probes = pope_questions(scenes, split, seed=cfg.seed, world=world)
        p_yes, p_no = score_yes_no(model, processor, [by_id[p.scene_id] for p in probes], [p.question for p in probes], batch_size=cfg.batch_size)
        out[split] = pope_metrics([y > n for y, n in zip(p_yes, p_no)], [p.label for p in probes])
    return out


def evaluate_claims(model, processor, scenes, images, cfg: SandboxEvalConfig, world: WorldConfig, mode: str = "direct") -> dict[str, Any]:
    """Labeler accuracy on claim questions, scored exactly as ``rlaifv conquer`` scores them
    (``mode``: direct, or one of the sandbox-only stand-ins)."""
    from ..records import PolarQuestion
    from ..stages.conquer import ConquerConfig, conquer

    items = claim_probe_set(scenes, world, cfg.seed)
    by_scene: dict[str, list[PolarQuestion]] = {s.scene_id: [] for s in scenes}
    for i, (s, obj, _, _) in enumerate(items):
        by_scene[s.scene_id].append(PolarQuestion(f"{s.scene_id}#0/{i}", sentence(obj), claim_question(obj)))
    groups = [(img, by_scene[s.scene_id]) for s, img in zip(scenes, images)]
    ccfg = ConquerConfig(mode=mode, batch_size=cfg.batch_size, describe_max_new_tokens=cfg.max_new_tokens)
    verdict = {c.claim_id: c.accepted for c in conquer(model, processor, groups, ccfg)}
    preds = [verdict[f"{s.scene_id}#0/{i}"] for i, (s, *_) in enumerate(items)]  # accepted iff p_yes > p_no
    result = pope_metrics(preds, [t for _, _, t, _ in items])
    result["accuracy_by_kind"] = {
        kind: round(sum(p == t for p, (_, _, t, k) in zip(preds, items) if k == kind) / max(1, sum(k == kind for *_, k in items)), 4)
        for kind in ("true",) + NEGATIVE_KINDS
    }
    return result


def evaluate_sandbox(model, processor, cfg: SandboxEvalConfig | None = None, world: WorldConfig | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """All sandbox metrics of one model on ``cfg.n_scenes`` held-out scenes.

    ``progress(done, total, part)`` is called as each part (descriptions, POPE, claims per mode) ends.
    """
    cfg = cfg or SandboxEvalConfig()
    world = world or WorldConfig()
    scenes = World(world).scenes(cfg.n_scenes, cfg.split, start=cfg.start)
    images = [render(s, world.image_size) for s in scenes]
    model.eval()
    out: dict[str, Any] = {"config": asdict(cfg)}
    parts: list[tuple[str, Callable[[], Any]]] = []
    if cfg.describe:
        parts.append(("describe", lambda: evaluate_descriptions(model, processor, scenes, images, cfg, world)))
    if cfg.pope:
        parts.append(("pope", lambda: evaluate_pope(model, processor, scenes, images, cfg, world)))
    for m in cfg.claim_modes if cfg.claims else ():
        parts.append((f"claims:{m}", lambda m=m: evaluate_claims(model, processor, scenes, images, cfg, world, m)))
    for i, (name, run) in enumerate(parts):
        if progress:
            progress(i, len(parts), name)
        result = run()
        if name.startswith("claims:"):
            out.setdefault("claims", {})[name.split(":", 1)[1]] = result
        else:
            out[name] = result
    if progress:
        progress(len(parts), len(parts), "done")
    return out


def summary_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One flat row for the rich table / Markdown."""
    row: dict[str, Any] = {"model": name}
    if "describe" in result:
        s, g = result["describe"]["sampled"], result["describe"].get("greedy")
        row.update({"CHAIR_i (sampled)": s["chair_i"], "CHAIR_s (sampled)": s["chair_s"], "recall (sampled)": s["recall"]})
        if g is not None:
            row.update({"CHAIR_i (greedy)": g["chair_i"], "recall (greedy)": g["recall"]})
        row.update({"attr err": s["attr_error_rate"], "unparsed": s["unparsed_sentences"], "avg len": s["avg_length"]})
    if "pope" in result:
        row.update({f"POPE {k} F1": v["f1"] for k, v in result["pope"].items()})
    for mode, res in result.get("claims", {}).items():
        tag = "" if mode == "direct" else f" ({mode}, stand-in)"
        row.update({f"claim F1{tag}": res["f1"], f"claim acc{tag}": res["accuracy"]})
    return row
