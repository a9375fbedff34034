"""``labeler-direct``: fine-tune the sandbox labeler so its *direct* yes/no read-out works.

Why: conquer reads p_yes / p_no at the labeler's first answer token (RLAIF-V Sec. 3.2). The
shipped ``sandbox:labeler`` describes almost perfectly but answers "yes" to every claim: whether
a claim is true is a pure interaction (the asked cell's content equals the question's
attributes), balanced data gives the loss no first-order gradient for it, and the decision
position (the last prompt token, whose logits give p_yes / p_no) never receives the asked
cell's content (``/work/shared/reference/labeler-recipe.md``).

What: one clean run from ``sandbox:labeler`` with

* **auxiliary linear heads** on the decision position's hidden state, during training only:
  after text block ``cell_layer`` (2) the asked cell's shape-or-empty / colour / size and the
  question's own shape / colour / size / cell; after block ``match_layer`` (3) the three match
  bits. Cross-entropy, weight ``aux_weight``, next to the language-model loss. The heads are
  not part of the model: ``save_pretrained`` writes a plain transformers VLM that ``load_vlm``
  and conquer read like any model;
* **minimal claim pairs**: per train scene one true claim about a present object ``t`` and one
  false claim made from ``t`` by changing exactly one thing (:data:`CLAIM_KINDS`), answers
  "Yes." / "No." with the first answer token weighted ``first_token_weight``; the weak kinds are
  drawn more often (a fixed reweighting, :attr:`DirectLabelerConfig.kind_weights`); a few scenes
  per batch give an existence pair in POPE's wording instead (a present and an absent shape);
* a describe batch every ``describe_every``-th step, so it keeps describing;
* one AdamW, vision tower frozen, linear warm-up then one cosine decay over the whole run.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..models.chat import IGNORE_INDEX, collate
from .render import render
from .tasks import DESCRIBE_PROMPT, claim_question, describe, hallucinated_object, noisy_description, probe_question, yes_no
from .world import COLOURS, GRID, SHAPES, SIZES, Scene, SceneObject, World, WorldConfig

#: False-claim kinds, named as ``evaluate.NEGATIVE_KINDS``: each changes exactly one thing of a
#: present object (shape -> a shape absent from the scene, colour, size, cell -> another cell),
#: or claims the absent companion of a present shape at an empty cell.
CLAIM_KINDS = ("absent_occupied", "wrong_colour", "wrong_size", "wrong_cell", "absent_companion")
#: Auxiliary heads: name -> (number of classes, which hidden state they read).
CELL_HEADS = {"cell_shape": len(SHAPES) + 1, "cell_colour": len(COLOURS), "cell_size": len(SIZES),
              "q_shape": len(SHAPES), "q_colour": len(COLOURS), "q_size": len(SIZES), "q_cell": GRID * GRID}
MATCH_HEADS = {"match_shape": 2, "match_colour": 2, "match_size": 2, "exists": 2}
#: Train scenes are drawn from indices below this, so their seeds never reach the val/test
#: splits (``world._SPLIT_OFFSET``: val starts at 10,000,000).
TRAIN_INDEX_RANGE = 10_000_000


@dataclass
class DirectLabelerConfig:
    """One ``labeler-direct`` fine-tuning run (written to ``rlaifv_finetune.json``)."""

    preset: str = "labeler-direct"
    init_from: str = "sandbox:labeler"
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    steps: int = 3400
    warmup: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    claim_scenes: int = 16  # x 2 claims (one true, one false) = 32 examples per claim step
    #: of those scenes, this many give an existence pair instead ("Is there a <shape> in the
    #: image?" for a present and an absent shape, POPE's wording): without them the model learns
    #: position-carrying claims only and answers "no" to every existence question (POPE F1 0.003)
    existence_scenes: int = 6
    describe_scenes: int = 16
    describe_every: int = 3  # every 3rd step is a describe batch
    #: describe batches: each description mentions up to ``describe_max_extra`` absent objects with
    #: this probability (0: canonical descriptions; the ``policy-direct`` preset keeps the policy's
    #: own caption noise, so it still hallucinates while its yes/no answers get good)
    describe_p_extra: float = 0.0
    describe_max_extra: int = 1
    first_token_weight: float = 10.0
    aux_weight: float = 1.0
    cell_layer: int = 2  # hidden_states index: after text block 2
    match_layer: int = 3  # after text block 3
    #: how often each false-claim kind is drawn (the weak kinds more often)
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "absent_occupied": 3.0, "wrong_cell": 2.0, "wrong_colour": 1.0, "wrong_size": 1.0, "absent_companion": 1.0})
    log_every: int = 200
    probe_scenes: int = 50  # fixed val scenes whose claim accuracy is logged every ``log_every`` steps

    def to_dict(self) -> dict:
        return asdict(self)


def preset(name: str) -> DirectLabelerConfig:
    """``labeler-direct``: the labeler recipe. ``policy-direct``: the same recipe from
    ``sandbox:policy`` with its own kind of noisy captions (up to 2 absent objects, ``p_extra`` 1.0; its
    pre-training used 0.8) in the describe batches: it keeps hallucinating in its descriptions while its
    direct yes/no gets good, the generative-discriminative gap self-feedback needs (issue 10.2)."""
    if name == "labeler-direct":
        return DirectLabelerConfig()
    if name == "policy-direct":
        return DirectLabelerConfig(preset=name, init_from="sandbox:policy", describe_p_extra=1.0, describe_max_extra=2)
    raise ValueError(f"unknown preset {name!r}; expected labeler-direct or policy-direct")


# --------------------------------------------------------------------------- claims


def false_claim(scene: Scene, t: SceneObject, kind: str, rng: random.Random, world: WorldConfig) -> SceneObject | None:
    """A false claim made from the present object ``t`` by one change of ``kind`` (None if impossible)."""
    absent = [s for s in SHAPES if s not in scene.shapes()]
    if kind == "absent_occupied":
        return SceneObject(rng.choice(absent), t.colour, t.size, t.cell) if absent else None
    if kind == "wrong_colour":
        return SceneObject(t.shape, rng.choice([c for c in COLOURS if c != t.colour]), t.size, t.cell)
    if kind == "wrong_size":
        return SceneObject(t.shape, t.colour, next(s for s in SIZES if s != t.size), t.cell)
    if kind == "wrong_cell":
        return SceneObject(t.shape, t.colour, t.size, rng.choice([c for c in range(GRID * GRID) if c != t.cell]))
    if kind == "absent_companion":
        comps = [c for c in (world.companion(s) for s in scene.shapes()) if c and c not in scene.shapes()]
        empty = [c for c in range(GRID * GRID) if scene.by_cell(c) is None]
        if comps and empty:
            return SceneObject(rng.choice(comps), rng.choice(COLOURS), rng.choice(SIZES), rng.choice(empty))
        return hallucinated_object(scene, rng, world)
    raise ValueError(f"unknown false-claim kind {kind!r}; expected one of {CLAIM_KINDS}")


def claim_pair(scene: Scene, rng: random.Random, world: WorldConfig, kind_weights: dict[str, float]) -> list[tuple[SceneObject, str]]:
    """[(true claim, "true"), (false claim, kind)]: a present object and one minimal false variant."""
    t = rng.choice(scene.objects)
    kinds, weights = list(kind_weights), list(kind_weights.values())
    while True:  # every scene admits wrong_colour / wrong_size, so this ends
        kind = rng.choices(kinds, weights)[0]
        neg = false_claim(scene, t, kind, rng, world)
        if neg is not None and neg not in scene.objects:
            return [(t, "true"), (neg, kind)]


def aux_targets(scene: Scene, obj: SceneObject) -> dict[str, int]:
    """Class targets of every auxiliary head for the claim ``obj`` about ``scene`` (-100: ignored)."""
    at = scene.by_cell(obj.cell)
    return {
        "cell_shape": SHAPES.index(at.shape) if at else len(SHAPES),
        "cell_colour": COLOURS.index(at.colour) if at else IGNORE_INDEX,
        "cell_size": SIZES.index(at.size) if at else IGNORE_INDEX,
        "q_shape": SHAPES.index(obj.shape), "q_colour": COLOURS.index(obj.colour),
        "q_size": SIZES.index(obj.size), "q_cell": obj.cell,
        "match_shape": int(at is not None and at.shape == obj.shape),
        "match_colour": int(at is not None and at.colour == obj.colour),
        "match_size": int(at is not None and at.size == obj.size),
        "exists": IGNORE_INDEX,  # existence probes only
    }


def probe_pair(scene: Scene, rng: random.Random, world: WorldConfig) -> list[tuple[str, bool, str]]:
    """[(question, answer, shape)] for a present shape and an absent one (a companion of a present
    shape half of the time, as POPE's adversarial split asks); [] when every shape is present."""
    present = sorted(scene.shapes())
    absent = [s for s in SHAPES if s not in present]
    if not absent:
        return []
    comps = [c for c in (world.companion(s) for s in present) if c and c in absent]
    neg = rng.choice(comps) if comps and rng.random() < 0.5 else rng.choice(absent)
    return [(probe_question(s), s != neg, s) for s in (rng.choice(present), neg)]


def probe_targets(shape: str, present: bool) -> dict[str, int]:
    """Auxiliary targets of an existence probe: the question's shape and whether the scene holds
    it (``exists``, read after block ``match_layer``); it names no cell, so the cell heads ignore it."""
    targets = {k: IGNORE_INDEX for k in {**CELL_HEADS, **MATCH_HEADS}}
    return {**targets, "q_shape": SHAPES.index(shape), "exists": int(present)}


def train_index(rng: random.Random) -> int:
    """A train-split scene index whose seed stays inside the train split."""
    return rng.randrange(TRAIN_INDEX_RANGE)


def claim_batch(world: World, processor, rng: random.Random, cfg: DirectLabelerConfig) -> tuple[dict, dict, list[str]]:
    """(model batch with labels, aux targets [B] per head, claim kinds) of ``claim_scenes`` x 2 claims."""
    images, questions, answers, targets, kinds = [], [], [], [], []
    for i in range(cfg.claim_scenes):
        scene = world.scene(train_index(rng), "train")
        img = render(scene, world.config.image_size)
        probes = probe_pair(scene, rng, world.config) if i < cfg.existence_scenes else []
        for question, answer, shape in probes:
            images.append(img)
            questions.append(question)
            answers.append(yes_no(answer))
            targets.append(probe_targets(shape, answer))
            kinds.append("probe_yes" if answer else "probe_no")
        for obj, kind in ([] if probes else claim_pair(scene, rng, world.config, cfg.kind_weights)):
            images.append(img)
            questions.append(claim_question(obj))
            answers.append(yes_no(kind == "true"))
            targets.append(aux_targets(scene, obj))
            kinds.append(kind)
    aux = {k: torch.tensor([t[k] for t in targets]) for k in targets[0]}
    return collate(processor, images, questions, answers), aux, kinds


def describe_batch(world: World, processor, rng: random.Random, cfg: DirectLabelerConfig) -> dict:
    """A batch of canonical descriptions of ``describe_scenes`` train scenes."""
    scenes = [world.scene(train_index(rng), "train") for _ in range(cfg.describe_scenes)]
    images = [render(s, world.config.image_size) for s in scenes]
    if cfg.describe_p_extra > 0:
        texts = [noisy_description(s, rng, world.config, cfg.describe_p_extra, cfg.describe_max_extra) for s in scenes]
    else:
        texts = [describe(s.objects) for s in scenes]
    return collate(processor, images, [DESCRIBE_PROMPT] * len(scenes), texts)


# --------------------------------------------------------------------------- losses


def decision_positions(labels: torch.Tensor) -> torch.Tensor:
    """Per row, the last prompt token: the position whose logits predict the first answer token.

    That is where conquer reads p_yes / p_no (the last position of the templated prompt).
    """
    supervised = labels != IGNORE_INDEX
    if not supervised.any(dim=1).all():
        raise ValueError("a row has no supervised answer token; cannot place its decision position")
    return supervised.int().argmax(dim=1) - 1


def make_heads(hidden: int) -> nn.ModuleDict:
    """The auxiliary linear heads (training scaffolding; never saved with the model)."""
    return nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in {**CELL_HEADS, **MATCH_HEADS}.items()})


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, first_weight: float) -> torch.Tensor:
    """Per-example weighted mean NLL of the answer tokens (first one x ``first_weight``), averaged."""
    tgt = labels[:, 1:]
    nll = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt, ignore_index=IGNORE_INDEX, reduction="none")
    mask = (tgt != IGNORE_INDEX).float()
    w = mask.clone()
    first = decision_positions(labels)  # logit row i predicts token i + 1: the first answer token's row
    w[torch.arange(len(w)), first] *= first_weight
    return ((nll * w).sum(1) / w.sum(1).clamp(min=1)).mean()


def aux_loss(hidden_states, pos: torch.Tensor, heads: nn.ModuleDict, aux: dict, cfg: DirectLabelerConfig) -> tuple[torch.Tensor, dict]:
    """Summed head cross-entropies at the decision position, and each head's accuracy."""
    rows = torch.arange(len(pos))
    at = {cfg.cell_layer: hidden_states[cfg.cell_layer][rows, pos], cfg.match_layer: hidden_states[cfg.match_layer][rows, pos]}
    total = torch.zeros(())
    acc: dict[str, float] = {}
    for name in heads:
        layer = cfg.cell_layer if name in CELL_HEADS else cfg.match_layer
        logits = heads[name](at[layer].float())
        keep = aux[name] != IGNORE_INDEX
        if keep.any():  # existence probes have no cell: their cell and match targets are ignored
            total = total + nn.functional.cross_entropy(logits, aux[name], ignore_index=IGNORE_INDEX)
        acc[name] = (logits.argmax(-1)[keep] == aux[name][keep]).float().mean().item() if keep.any() else float("nan")
    return total, acc


def claim_step_loss(model, heads: nn.ModuleDict, batch: dict, aux: dict, cfg: DirectLabelerConfig) -> tuple[torch.Tensor, dict]:
    """LM loss (first token weighted) + ``aux_weight`` x auxiliary loss on one claim batch."""
    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    pos = decision_positions(labels)
    lm = weighted_lm_loss(out.logits, labels, cfg.first_token_weight)
    ax, acc = aux_loss(out.hidden_states, pos, heads, aux, cfg)
    first = labels[torch.arange(len(pos)), pos + 1]
    yes_acc = (out.logits[torch.arange(len(pos)), pos].argmax(-1) == first).float().mean().item()
    return lm + cfg.aux_weight * ax, {"lm": lm.item(), "aux": ax.item(), "first_token_acc": yes_acc, **acc}


def describe_step_loss(model, batch: dict) -> torch.Tensor:
    """Per-example mean NLL of the description tokens."""
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    return weighted_lm_loss(out.logits, batch["labels"], 1.0)


# --------------------------------------------------------------------------- monitoring and evaluation


@torch.no_grad()
def probe_accuracy(model, processor, items: list, images: dict) -> dict:
    """Direct yes/no on a fixed claim set: accuracy, F1, yes ratio, mean yes+no mass, per-kind accuracy.

    ``items`` come from ``evaluate.claim_probe_set``; read out exactly as ``score_yes_no`` does
    (last prompt position, the template's yes/no ids).
    """
    from ..eval.pope import pope_metrics
    from ..models.generate import score_yes_no

    was_training = model.training
    model.eval()
    p_yes, p_no = score_yes_no(model, processor, [images[s.scene_id] for s, *_ in items], [claim_question(o) for _, o, _, _ in items])
    model.train(was_training)
    preds = [y > n for y, n in zip(p_yes, p_no)]
    res = pope_metrics(preds, [t for _, _, t, _ in items])
    by_kind: dict[str, list[bool]] = {}
    for p, (_, _, t, k) in zip(preds, items):
        by_kind.setdefault(k, []).append(p == t)
    res["accuracy_by_kind"] = {k: round(sum(v) / len(v), 4) for k, v in by_kind.items()}
    res["mean_mass"] = round(sum(y + n for y, n in zip(p_yes, p_no)) / len(p_yes), 4)
    false_acc = [v for k, v in res["accuracy_by_kind"].items() if k != "true"]
    # chance is 0.5 here whatever the mix (the set holds 1 true : 5 false claims per scene)
    res["balanced_accuracy"] = round((res["accuracy_by_kind"].get("true", 0.0) + sum(false_acc) / max(1, len(false_acc))) / 2, 4)
    return res


def fixed_probe_set(cfg: DirectLabelerConfig) -> tuple[list, dict]:
    """The claim probe set logged during training: ``probe_scenes`` val scenes (never test scenes)."""
    from .evaluate import claim_probe_set

    scenes = World(cfg.world).scenes(cfg.probe_scenes, "val")
    return claim_probe_set(scenes, cfg.world, seed=cfg.seed), {s.scene_id: render(s, cfg.world.image_size) for s in scenes}


#: Issue 10 part 1 targets on fresh test scenes (metric -> (comparison, bound)).
TARGETS = {"claim F1": (">=", 0.95), "claim accuracy": (">=", 0.97), "weakest false kind": (">=", 0.93),
           "POPE F1 (min split)": (">=", 0.95), "CHAIR_i (sampled)": ("<=", 0.02), "recall (sampled)": (">=", 0.97)}


def fresh_eval(model, processor, n_scenes: int = 400, start: int = 10_000, seed: int = 0, progress=None) -> dict:
    """``evaluate_sandbox`` on test scenes ``start .. start + n_scenes`` (a slice no recipe was tuned
    on), ``direct`` claims with the per-kind breakdown, plus the targets and whether each is met."""
    from .evaluate import SandboxEvalConfig, evaluate_sandbox

    cfg = SandboxEvalConfig(n_scenes=n_scenes, split="test", start=start, seed=seed, claim_modes=("direct",))
    res = evaluate_sandbox(model, processor, cfg, progress=progress)
    claims = res["claims"]["direct"]
    values = {
        "claim F1": claims["f1"], "claim accuracy": claims["accuracy"],
        "weakest false kind": min(v for k, v in claims["accuracy_by_kind"].items() if k != "true"),
        "POPE F1 (min split)": min(v["f1"] for v in res["pope"].values()),
        "CHAIR_i (sampled)": res["describe"]["sampled"]["chair_i"], "recall (sampled)": res["describe"]["sampled"]["recall"],
    }
    res["targets"] = {k: {"value": values[k], "target": f"{op} {b}", "met": values[k] >= b if op == ">=" else values[k] <= b}
                      for k, (op, b) in TARGETS.items()}
    return res


# --------------------------------------------------------------------------- training


def lr_factor(cfg: DirectLabelerConfig) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then one cosine decay to 0 over the rest of the run."""
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))))
    return f


def setup(cfg: DirectLabelerConfig, model=None, processor=None):
    """(model, processor, heads, params, optimizer, scheduler): vision tower frozen, one AdamW."""
    from ..models.load import load_vlm

    torch.manual_seed(cfg.seed)
    if model is None:
        model, processor = load_vlm(cfg.init_from)
    for p in model.model.vision_model.parameters():
        p.requires_grad_(False)
    heads = make_heads(model.config.text_config.hidden_size)
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    return model, processor, heads, params, opt, sched


def train_step(model, processor, heads, params, opt, sched, world: World, rng: random.Random, cfg: DirectLabelerConfig, step: int) -> dict:
    """One optimizer step: a describe batch every ``describe_every``-th step, else a claim batch."""
    model.train()
    if step % cfg.describe_every == cfg.describe_every - 1:
        loss = describe_step_loss(model, describe_batch(world, processor, rng, cfg))
        stats = {"describe": loss.item()}
    else:
        batch, aux, _ = claim_batch(world, processor, rng, cfg)
        loss, stats = claim_step_loss(model, heads, batch, aux, cfg)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    sched.step()
    return stats


def _running(history: list[dict], key: str, n: int = 30) -> float:
    """Mean of ``key`` over the last ``n`` steps that have it (NaN if none)."""
    vals = [h[key] for h in history[-n:] if key in h and not math.isnan(h[key])]
    return sum(vals) / len(vals) if vals else float("nan")


def _json_mean(history: list[dict], key: str) -> float | None:
    """:func:`_running` for the JSON log: None instead of NaN (strict JSON has no NaN)."""
    v = _running(history, key)
    return None if math.isnan(v) else round(v, 4)


def finetune(cfg: DirectLabelerConfig, out: Path | None = None, progress=None, on_log=None, model=None, processor=None,
             save_at: Sequence[int] = (), stop_after: int | None = None):
    """Run the recipe; save a plain VLM folder + ``rlaifv_finetune.json`` to ``out``. Returns (model, processor, log).

    ``progress(done, total, msg)`` drives a bar; ``on_log(step, probe_result)`` sees the fixed
    val probe set every ``log_every`` steps (and before the first step). ``save_at``: also save
    snapshots ``out/step-NNNNN`` after those steps (labelers of increasing quality from one run,
    for the labeler-quality curve); ``stop_after``: end the run there (the schedule stays that of
    ``cfg.steps``, so the snapshots are those of the full run); then ``out`` holds only snapshots.
    Neither changes the recipe, so neither is part of ``cfg``.
    """
    if save_at and out is None:
        raise ValueError("save_at needs an output folder")
    last = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    model, processor, heads, params, opt, sched = setup(cfg, model, processor)
    rng, world = random.Random(cfg.seed), World(cfg.world)
    items, images = fixed_probe_set(cfg)
    curve: list[dict] = []
    history: list[dict] = []

    def log_probe(step: int) -> None:
        res = probe_accuracy(model, processor, items, images)
        curve.append({"step": step, **{k: _json_mean(history, k) for k in ("lm", "aux", "describe", "first_token_acc")}, "probe": res})
        if on_log is not None:
            on_log(step, res)

    t0 = time.time()
    log_probe(0)
    for step in range(last):
        history.append(train_step(model, processor, heads, params, opt, sched, world, rng, cfg, step))
        if progress is not None:
            progress(step + 1, last, f"lm {_running(history, 'lm'):.3f} aux {_running(history, 'aux'):.3f} "
                     f"first-token acc {_running(history, 'first_token_acc'):.2f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log_probe(step + 1)
        if step + 1 in save_at:
            _snapshot(model, processor, Path(out) / f"step-{step + 1:05d}", cfg, curve, history, t0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    log = _log(cfg, curve, history, t0)
    if out is not None and last == cfg.steps:
        save(model, processor, Path(out), cfg, log)
    return model, processor, log


def _log(cfg: DirectLabelerConfig, curve: list[dict], history: list[dict], t0: float) -> dict:
    return {"config": cfg.to_dict(), "train_seconds": round(time.time() - t0, 1), "curve": list(curve), "steps_done": len(history),
            "final_head_accuracy": {k: _json_mean(history, k) for k in {**CELL_HEADS, **MATCH_HEADS}}}


def _snapshot(model, processor, out: Path, cfg: DirectLabelerConfig, curve: list[dict], history: list[dict], t0: float) -> None:
    """A mid-run copy as a plain VLM folder (eval mode while saving, then back to training)."""
    model.eval()
    save(model, processor, out, cfg, _log(cfg, curve, history, t0))
    model.train()


def save(model, processor, out: Path, cfg: DirectLabelerConfig, log: dict) -> None:
    """The model as a plain ``save_pretrained`` folder (no heads), its tokenizer/processor, and the run log.

    ``rlaifv_finetune.json`` holds the exact config, the base model's own build log
    (its ``rlaifv_pretrain.json``) and the training curve.
    """
    from ..models.load import resolve_model_path

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    base = resolve_model_path(cfg.init_from) if cfg.init_from else None
    record = dict(log)
    if base is not None and (base / "rlaifv_pretrain.json").exists():
        record["base_pretrain"] = json.loads((base / "rlaifv_pretrain.json").read_text())
    if base is not None and (base / "rlaifv_tiny.json").exists():
        (out / "rlaifv_tiny.json").write_text((base / "rlaifv_tiny.json").read_text())
    (out / "rlaifv_finetune.json").write_text(json.dumps(record, indent=2))
