"""Supervised pre-training of the two sandbox VLMs on the CPU: ``policy`` and ``labeler``.

The recipe has two stages, as real VLMs do:

1. **Vision stage** (the sandbox's stand-in for a CLIP/SigLIP-pretrained encoder): the vision
   tower and connector learn to encode each grid cell's content, with a per-image-token
   classification head (shape-or-empty, colour, size) on the 9 image tokens, one per cell.
   Real VLMs start from an encoder that already sees; training one from captions alone on a
   CPU is what kept the prototype's yes/no answers at chance (sandbox notes, item 3).
2. **Instruction stage**: next-token SFT on a task mix (descriptions, attribute and counting
   questions, yes/no probes, position-carrying claim questions), answer tokens only.

The ``policy`` preset's descriptions come from captions that mention, with probability
``p_extra``, an absent co-occurring object (as real SFT captions mention things not in the
image), while its yes/no data is clean: it hallucinates at a stable rate and its yes/no
judgement is better than its descriptions (the gap self-feedback needs). The ``labeler``
preset trains on clean data with more claim questions and a longer budget.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..models.chat import collate
from ..models.tiny import TinyVLMConfig, build_tiny_vlm, save_tiny, train_tokenizer
from .render import render
from .tasks import sample_example
from .world import COLOURS, GRID, SHAPES, SIZES, World, WorldConfig


@dataclass
class PretrainConfig:
    """One sandbox pre-training run. Presets: ``PRESETS['policy']``, ``PRESETS['labeler']``."""

    preset: str = "custom"
    seed: int = 0
    model: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    vision_steps: int = 300
    vision_lr: float = 2e-3
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    freeze_vision: bool = True
    #: task -> weight in the instruction mix
    mix: dict[str, float] = field(default_factory=lambda: {"describe": 0.5, "probe": 0.15, "claim": 0.25, "count": 0.04, "colour": 0.03, "where": 0.03})
    p_extra: float = 0.0  # probability that a training description mentions an absent companion
    max_extra: int = 1  # at most this many absent objects per training description (each with p_extra)
    #: average the loss per example, then over the batch, so a one-word "Yes." weighs as much
    #: as a 40-token description (token averaging drowns the yes/no signal)
    per_example_loss: bool = True
    #: claim-question answers continue after "Yes."/"No." with what the asked cell holds
    explain_claims: bool = True
    #: every ``context_every``-th step is a batch of descriptions each followed by
    #: ``extra_turns`` claim-question turns: trains the describe-then-answer mode, where the
    #: model answers with its own description in context (0: off). Separate batches keep
    #: short examples from being padded to the long ones.
    extra_turns: int = 0
    context_every: int = 3
    extra_mix: dict[str, float] = field(default_factory=lambda: {"claim": 0.8, "probe": 0.2})
    log_every: int = 100
    #: continue from this checkpoint (folder) instead of building a new model (staged training)
    init_from: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, PretrainConfig] = {
    # Descriptions from captions that name up to 2 absent (mostly co-occurring) objects, each
    # with probability 0.8; clean yes/no data.
    "policy": PretrainConfig(
        preset="policy", steps=1200, p_extra=0.8, max_extra=2,
        mix={"describe": 0.6, "probe": 0.15, "claim": 0.15, "count": 0.04, "colour": 0.03, "where": 0.03},
    ),
    # Clean data; every second step is a describe + 3 claim-question turns batch (the
    # describe-then-answer stand-in); the rest mixes descriptions, grounding and direct yes/no.
    "labeler": PretrainConfig(
        preset="labeler", steps=2000, extra_turns=3, context_every=2,
        mix={"describe": 0.5, "what_at": 0.1, "claim": 0.3, "probe": 0.1},
    ),
}


def tokenizer_corpus(world: World, n_scenes: int = 400, seed: int = 0) -> list[str]:
    """Text the local tokenizer is trained on: every task's questions and answers."""
    rng = random.Random(seed)
    # each polar word also alone, as the first answer token sees it (no leading space), often
    # enough to be merged into one token: p_yes / p_no read exactly these four tokens
    texts = ["yes", "no", "Yes", "No"] * 100 + ["Please answer yes or no."]
    for scene in world.scenes(n_scenes, "train"):
        for task in ("describe", "count", "colour", "where", "probe", "claim", "what_at"):
            ex = sample_example(scene, task, rng, world.config, p_extra=0.5, explain=True)
            texts += [ex.question, ex.answer]
    return texts


def cell_targets(scenes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell labels [B, 9]: shape index (len(SHAPES) = empty), colour, size (-100 if empty)."""
    n = GRID * GRID
    shape = torch.full((len(scenes), n), len(SHAPES))
    colour = torch.full((len(scenes), n), -100)
    size = torch.full((len(scenes), n), -100)
    for b, s in enumerate(scenes):
        for o in s.objects:
            shape[b, o.cell] = SHAPES.index(o.shape)
            colour[b, o.cell] = COLOURS.index(o.colour)
            size[b, o.cell] = SIZES.index(o.size)
    return shape, colour, size


def image_features(model, batch: dict) -> torch.Tensor:
    """Image-token embeddings [B, n_tokens, D] from the model's own vision tower + connector."""
    kw = {k: v for k, v in batch.items() if k.startswith("pixel") or k == "image_grid_thw"}
    out = model.get_image_features(**kw)
    feats = out.pooler_output if hasattr(out, "pooler_output") and out.pooler_output is not None else out
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats.view(batch["input_ids"].shape[0], -1, feats.shape[-1])


def _batch(world: World, processor, rng: random.Random, cfg: PretrainConfig, tasks: list[str], weights: list[float], context: bool = False):
    """One training batch; ``context=True`` makes every example describe + claim turns."""
    if context:
        tasks, weights = ["describe"], [1.0]
    scenes = [world.scene(rng.randrange(10**9), "train") for _ in range(cfg.batch_size)]
    exs = [sample_example(s, rng.choices(tasks, weights)[0], rng, world.config, cfg.p_extra, cfg.explain_claims, cfg.max_extra) for s in scenes]
    imgs = [render(s, world.config.image_size) for s in scenes]
    more = None
    if context:
        xt, xw = list(cfg.extra_mix), list(cfg.extra_mix.values())
        more = [[_qa(sample_example(s, rng.choices(xt, xw)[0], rng, world.config, 0.0, cfg.explain_claims)) for _ in range(cfg.extra_turns)] for s in scenes]
    return scenes, collate(processor, imgs, [e.question for e in exs], [e.answer for e in exs], followups=more)


def _qa(ex) -> tuple[str, str]:
    return ex.question, ex.answer


def vision_stage(model, processor, world: World, cfg: PretrainConfig, rng: random.Random, progress=None) -> dict:
    """Train vision tower + connector to encode each cell's content and its position.

    The heads (discarded after) read shape-or-empty, colour, size and cell index from each
    image token, so the language model can later find "the top left" by content-based attention.
    """
    dim = model.config.text_config.hidden_size
    names = ("shape", "colour", "size", "cell")
    sizes = (len(SHAPES) + 1, len(COLOURS), len(SIZES), GRID * GRID)
    heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in zip(names, sizes)})
    params = list(model.model.vision_model.parameters()) + list(model.model.connector.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr)
    ce = nn.CrossEntropyLoss(ignore_index=-100)
    acc = 0.0
    for step in range(cfg.vision_steps):
        scenes, batch = _batch(world, processor, rng, cfg, ["count"], [1.0])
        feats = image_features(model, batch)
        tgt = cell_targets(scenes) + (torch.arange(GRID * GRID).expand(len(scenes), -1),)
        logits = [heads[k](feats) for k in names]
        loss = sum(ce(lg.flatten(0, 1), t.flatten()) for lg, t in zip(logits, tgt))
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = (logits[0].argmax(-1) == tgt[0]).float().mean().item()
        if progress is not None:
            progress(step + 1, cfg.vision_steps, f"vision loss {loss.item():.3f} cell acc {acc:.3f}")
    return {"vision_loss": loss.item(), "vision_cell_acc": acc}


def sft_loss(model, batch: dict, per_example: bool) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens, averaged per token or per example."""
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    tgt = labels[:, 1:]
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
    mask = (tgt != -100).float()
    if not per_example:
        return (nll * mask).sum() / mask.sum()
    return ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def instruction_stage(model, processor, world: World, cfg: PretrainConfig, rng: random.Random, progress=None, on_log=None) -> dict:
    """Next-token SFT on the task mix with AdamW and a cosine schedule with warm-up."""
    if cfg.freeze_vision:
        for p in model.model.vision_model.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    tasks, weights = list(cfg.mix), list(cfg.mix.values())
    model.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        context = cfg.extra_turns > 0 and step % cfg.context_every == cfg.context_every - 1
        _, batch = _batch(world, processor, rng, cfg, tasks, weights, context)
        loss = sft_loss(model, batch, cfg.per_example_loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, cfg.steps, f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if on_log is not None and (step + 1) % cfg.log_every == 0:
            model.eval()
            on_log(step + 1, model)
            model.train()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"final_loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}


def pretrain(cfg: PretrainConfig, out: Path | None = None, progress=None, on_log=None, on_build=None):
    """Build, train and (if ``out``) save a sandbox VLM. Returns (model, processor, log).

    ``on_log(step, model)`` runs every ``cfg.log_every`` steps (e.g. an evaluation);
    ``on_build(processor)`` is called once the model and processor exist.
    """
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    world = World(cfg.world)
    if cfg.init_from:
        from ..models.load import load_vlm

        model, processor = load_vlm(cfg.init_from)
        model.train()
    else:
        tok = train_tokenizer(tokenizer_corpus(world, seed=cfg.seed), cfg.model.arch, cfg.model.vocab_size)
        model, processor = build_tiny_vlm(cfg.model, tok, seed=cfg.seed)
    if on_build is not None:
        on_build(processor)
    t0 = time.time()
    log = {"config": cfg.to_dict()}
    if cfg.vision_steps > 0:
        log.update(vision_stage(model, processor, world, cfg, rng, progress))
    log.update(instruction_stage(model, processor, world, cfg, rng, progress, on_log))
    log["train_seconds"] = round(time.time() - t0, 1)
    if out is not None:
        save_tiny(model, processor, Path(out), cfg.model)
        (Path(out) / "rlaifv_pretrain.json").write_text(json.dumps(log, indent=2))
    return model, processor, log


def preset(name: str, **overrides) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
