"""``rlaifv train``: DPO for any HF VLM on RLAIF-V preference pairs (RLAIF-V Sec. 3.2).

* Loss: sigmoid DPO on summed answer log-probs (``losses.dpo_loss``), optional chosen-answer NLL.
* Reference: log-probs computed once by the reference model and cached on disk
  (``refcache``), so no reference model is in memory while training.
* Parameters: full fine-tuning or LoRA (PEFT), vision tower frozen (``model_setup``).
* Schedule: AdamW, linear warm-up then cosine decay to 0.
* Checkpoints: ``out/checkpoints/step-NNNNNN/`` every 1/``checkpoints_per_epoch`` epoch and at
  the end (``save_pretrained`` folders: merged model or PEFT adapter, plus the processor).
* Resume: ``out/resume/`` holds the trainable weights, optimizer, scheduler and RNG state of the
  last checkpoint; rerunning the same command continues from there mid-epoch (the data order is
  a function of (seed, epoch), so the remaining batches are the same ones).
* Several processes (``accelerate launch``): data parallel; each optimizer step's batch is split
  across processes, gradients are averaged by DDP, rank 0 writes. DeepSpeed ZeRO-2/3 and FSDP
  through the accelerate config files in ``configs/accelerate/`` (checkpoints gathered whole).
* Scale (``scale.py``): mixed precision, gradient checkpointing, QLoRA preparation, ``max_steps``,
  ``save_total_limit``, TensorBoard / W&B through accelerate's trackers. Why this loop and not
  TRL's ``DPOTrainer``: measured in BENCHMARKS.md ("DPO trainer choice") and ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import ON_ERROR_CHOICES, ConfigError, check_choice, check_positive
from ..models.chat import collate
from ..models.load import load_vlm
from ..models.options import LoadOptions
from ..progress import progress_bar
from ..runner import _cut_torn_tail, barrier
from ..store import rejects_count, write_manifest
from .data import TrainExample, epoch_batches, load_pairs, prepare_examples, train_max_length
from .losses import dpo_loss, sequence_logps
from .model_setup import save_model, setup_trainable, trainable_state
from .refcache import cached_reference_logps
from .scale import (MIXED_PRECISION_CHOICES, REPORT_TO_CHOICES, configure_deepspeed, enable_gradient_checkpointing, gathered_state, is_sharded,
                    load_resume_sharded, make_accelerator, prepare_quantized, protected_checkpoints, prune_checkpoints,
                    save_from_state, save_resume_sharded, start_trackers, whole_model_loading)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); names the step and pairs."""


@dataclass
class DPOConfig(LoadOptions):
    """Settings of ``rlaifv train`` (defaults: the reference code's LoRA recipe, rlaif-v-method.md Sec. 2).

    Model loading: the ``LoadOptions`` fields (``models/options.py``: device, dtype, device_map, max_memory,
    attn_implementation, load_in_4bit/8bit, trust_remote_code), flat; they load the policy
    and the reference (4/8-bit: LoRA only).
    """

    model: str = ""  # starting policy: model folder (or sandbox:NAME); required
    ref_model: str = ""  # reference model; empty: the starting policy (the paper's choice)
    pairs: str = ""  # pairs folder/file (PreferencePair records, e.g. a feedback run's pairs/)
    prompts: str = ""  # the prompts file the pairs came from (resolves the images)
    out: str = "runs/train"
    beta: float = 0.1  # DPO temperature
    nll_weight: float = 0.0  # weight of the per-token NLL on the chosen answer (paper: 0)
    finetune: str = "lora"  # lora | full
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"  # all-linear (text decoder) or comma-separated names, e.g. q_proj,v_proj
    merge_lora: bool = True  # LoRA checkpoints saved merged (plain transformers folders); False: adapter folders
    freeze_vision: bool = True
    lr: float = 1e-5
    epochs: float = 4.0
    batch_size: int = 8  # pairs per optimizer step (all processes together)
    grad_accum: int = 1  # micro-batches per process per step
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoints_per_epoch: int = 4  # the paper selects among 1/4-epoch checkpoints
    max_length: int = 0  # longest pair (prompt + answer tokens); longer ones are bad inputs, never truncated. 0: the model's context
    max_image_pixels: int = 40_000_000  # larger images are bad inputs, refused from their header (0: no limit)
    ref_cache: str = ""  # folder of cached reference log-probs; empty: <out>/ref_cache
    ref_batch_size: int = 16
    seed: int = 0
    on_error: str = "raise"  # raise | skip (bad pairs go to <out>/rejects.jsonl)
    progress: bool = True
    # scale (training/scale.py; accelerate config files for DDP / ZeRO / FSDP: configs/accelerate/)
    mixed_precision: str | bool = "no"  # no | bf16 | fp16: forward under autocast (Accelerator(mixed_precision)); bf16 also on the CPU, fp16 needs a GPU (YAML's unquoted no = false = no)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute, same gradients
    max_steps: int = 0  # > 0: exactly this many optimizer steps (overrides epochs; schedule and save points follow)
    save_total_limit: int | None = None  # keep only the last N step-N/ checkpoints (never one an iteration selected); None: all. rlaifv iterate selects among the kept ones
    report_to: str = "none"  # none | tensorboard | wandb | all: accelerate's trackers, one log per optimizer step
    logging_dir: str = ""  # where the trackers write; empty: <out>/logs

    def __post_init__(self) -> None:
        """Settings checked before any work (a bad one used to surface after the reference pass)."""
        super().__post_init__()
        check_choice("on_error", self.on_error, ON_ERROR_CHOICES)
        check_choice("finetune", self.finetune, ("lora", "full"))
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        check_choice("report_to", self.report_to, REPORT_TO_CHOICES)
        if self.quantized and self.finetune == "full":
            raise ConfigError("train: 4/8-bit weights (--load-in-4bit / --load-in-8bit) cannot be fully fine-tuned; use --finetune lora")
        check_positive(self, "train", ("batch_size", "grad_accum", "checkpoints_per_epoch", "ref_batch_size", "lora_r"))
        check_positive(self, "train", ("max_length", "max_steps"), 0)
        if self.save_total_limit is not None:
            check_positive(self, "train", ("save_total_limit",))
        for name in ("lr", "epochs", "beta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")


def _schedule(total: int, warmup_ratio: float):
    warm = max(1, int(round(warmup_ratio * total)))
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


def _save_points(steps_per_epoch: int, total: int, per_epoch: int) -> list[int]:
    pts = {round(k * steps_per_epoch / per_epoch) for k in range(1, per_epoch * math.ceil(total / steps_per_epoch) + 1)}
    return sorted({p for p in pts if 0 < p <= total} | {total})


def _pair_logps(model, processor, examples: list[TrainExample]) -> tuple[torch.Tensor, ...]:
    """Policy (chosen, rejected) summed answer log-probs and chosen token counts, one forward."""
    images = [e.image for e in examples] * 2
    questions = [e.pair.question for e in examples] * 2
    answers = [e.pair.chosen for e in examples] + [e.pair.rejected for e in examples]
    batch = collate(processor, images, questions, answers)
    labels = batch.pop("labels")
    dev = next(model.parameters()).device
    out = model(**{k: v.to(dev) for k, v in batch.items()}, use_cache=False)
    logps, ntok = sequence_logps(out.logits, labels.to(dev))
    n = len(examples)
    return logps[:n], logps[n:], ntok[:n]


def _ref_tensors(examples: list[TrainExample], ref: dict[str, dict], dev) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor([ref[e.pair.id]["chosen_logp"] for e in examples], device=dev)
    r = torch.tensor([ref[e.pair.id]["rejected_logp"] for e in examples], device=dev)
    return c, r


def micro_batches(batch: list[int], rank: int, world: int, accum: int) -> list[list[int]]:
    """This process's share of a step's batch, in ``accum`` non-empty micro-batches."""
    mine = batch[rank::world]
    size = math.ceil(len(mine) / accum)
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def _step(model, processor, examples: list[TrainExample], chunks: list[list[int]], ref: dict, cfg: DPOConfig,
          global_size: int, world: int, accelerator) -> dict[str, float]:
    """Forward/backward of this process's micro-batches; loss scaled so DDP's mean = the batch mean."""
    stats = {"loss": 0.0, "dpo": 0.0, "nll": 0.0, "acc": 0.0, "margin": 0.0}
    for j, idx in enumerate(chunks):
        ex = [examples[i] for i in idx]
        ctx = accelerator.no_sync(model) if j < len(chunks) - 1 else _null()
        with ctx:
            pc, pr, nt = _pair_logps(model, processor, ex)
            rc, rr = _ref_tensors(ex, ref, pc.device)
            out = dpo_loss(pc, pr, rc, rr, cfg.beta, chosen_tokens=nt, nll_weight=cfg.nll_weight)
            if not torch.isfinite(out.loss):
                raise TrainingError(f"non-finite loss {out.loss.item()} on pairs {[e.pair.id for e in ex]}")
            accelerator.backward(out.loss * len(ex) / global_size * world)
        w = len(ex) / global_size * world
        stats["loss"] += out.loss.item() * w
        stats["dpo"] += out.losses.mean().item() * w
        stats["nll"] += out.nll.item() * w
        stats["acc"] += (out.chosen_rewards > out.rejected_rewards).float().mean().item() * w
        stats["margin"] += (out.chosen_rewards - out.rejected_rewards).mean().item() * w
    return stats


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _load_resume(folder: Path, model, opt, sched) -> int:
    """Restore the last checkpoint's training state; returns its step (0: start fresh)."""
    state_file = folder / "state.json"
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    if state.get("sharded"):
        raise ConfigError(f"{folder}: resume state written under DeepSpeed/FSDP; continue it with the same accelerate config")
    weights = torch.load(folder / "trainable.pt", weights_only=True)
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TrainingError(f"{folder}: resume state does not fit the model (unknown parameters {missing[:3]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
    return int(state["step"])


def _resume_step(folder: Path) -> int:
    """The step a resume state points past (0: none), without loading it."""
    state_file = folder / "state.json"
    return int(json.loads(state_file.read_text())["step"]) if state_file.exists() else 0


def _recover_resume(folder: Path) -> None:
    """Finish or undo a ``_save_resume`` cut short by a kill (rank 0, before anyone reads it).

    A kill between its two renames leaves no ``folder``: the complete new state (``.tmp`` with
    its ``state.json``, written last) wins, else the previous one (``.old``). Leftover
    ``.tmp`` / ``.old`` folders are removed, so a finished run folder holds only ``resume/``.
    """
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if not folder.exists():
        for candidate in (tmp, old):
            if (candidate / "state.json").exists():
                os.replace(candidate, folder)
                break
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _read_summary(path: Path) -> dict[str, Any]:
    """``train.json`` of an earlier run, or {} if absent or cut short (it is rewritten then)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _last_logged(path: Path, step: int) -> dict[str, Any]:
    """The log line of ``step`` (the last finished step of a run resumed at its end), or {}."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(rows) if r.get("step") == step), {})


def _save_resume(folder: Path, step: int, model, opt, sched) -> None:
    """Atomically replace ``folder`` with the training state at ``step``."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable_state(model), tmp / "trainable.pt")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    rng = torch.get_rng_state().tolist()
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict(), "rng": rng}))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint(acc, out: Path, step: int, spe: int, model, processor, opt, sched, cfg: DPOConfig, log: dict) -> None:
    """Every process: write ``out/checkpoints/step-N`` (atomically, main process), then the resume
    state pointing past it, then (``save_total_limit``) delete older checkpoints.

    Sharded (DeepSpeed / FSDP): the weights are gathered by every process first and the resume
    state is accelerate's ``save_state`` (``scale.py``).
    """
    state = gathered_state(acc, model)  # a collective under DeepSpeed / FSDP: every process calls it
    final = out / "checkpoints" / f"step-{step:06d}"
    if acc.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if state is None:
            save_model(acc.unwrap_model(model), processor, tmp, cfg.merge_lora, base=cfg.model)
        else:
            save_from_state(acc.unwrap_model(model), processor, tmp, state, cfg)
        info = {"step": step, "epoch": round(step / spe, 4), "train": log, "base_model": cfg.model, "finetune": cfg.finetune}
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    if is_sharded(acc):
        save_resume_sharded(acc, out / "resume", step, sched)
    elif acc.is_main_process:
        _save_resume(out / "resume", step, acc.unwrap_model(model), opt, sched)
    if acc.is_main_process:  # the new checkpoint and the state past it are complete: older ones may go
        prune_checkpoints(list_checkpoints(out), cfg.save_total_limit, protected_checkpoints(out))
    barrier()


def _trim_log(path: Path, step: int) -> None:
    """Keep only log lines of steps <= ``step`` (a resumed run logs the later steps again)."""
    if not path.exists():
        return
    _cut_torn_tail(path)
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def list_checkpoints(out: str | Path) -> list[Path]:
    """Finished checkpoints of a training run, in step order."""
    folder = Path(out) / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if folder.exists() else []


def _reference(cfg: DPOConfig, pairs, prompts, base, rank: int, out: Path) -> dict[str, dict]:
    """Cached reference log-probs: rank 0 computes them on a miss, the others wait, then all read."""
    ref_name = cfg.ref_model or cfg.model
    root = Path(cfg.ref_cache) if cfg.ref_cache else out / "ref_cache"

    def load(name: str):
        return load_vlm(name, options=cfg)

    if rank == 0:
        with progress_bar("reference log-probs", cfg.progress) as prog:
            ref, folder, hit = cached_reference_logps(ref_name, pairs, prompts, base, root, load, cfg.ref_batch_size, prog)
        (out / "ref_cache.json").write_text(json.dumps({"folder": str(folder), "ref_model": ref_name, "hit": hit}) + "\n")
    barrier()
    if rank != 0:  # the cache is complete now: a hit
        ref, _, _ = cached_reference_logps(ref_name, pairs, prompts, base, root, load, cfg.ref_batch_size)
    return ref


def _rank_fingerprints(out: Path, model, rank: int, world: int) -> list[str]:
    """sha256 of each process's trainable weights; raises if data-parallel replicas differ."""
    h = hashlib.sha256()
    for name, t in sorted(trainable_state(model).items()):
        h.update(name.encode())
        h.update(t.float().numpy().tobytes())
    folder = out / "ranks"
    folder.mkdir(exist_ok=True)
    (folder / f"{rank}.txt").write_text(h.hexdigest())
    barrier()
    prints = [(folder / f"{r}.txt").read_text() for r in range(world)]
    if len(set(prints)) > 1:
        raise TrainingError(f"data-parallel replicas ended with different weights: {prints}")
    return prints


def _prepare(cfg: DPOConfig, acc, out: Path):
    """Validated examples, cached reference log-probs, and the model set up for training."""
    device, rank = str(acc.device), acc.process_index
    if cfg.finetune not in ("full", "lora"):
        raise ConfigError(f"finetune must be 'full' or 'lora', got {cfg.finetune!r}")
    if not cfg.pairs or not cfg.prompts:
        raise ConfigError("train needs `pairs` (a pairs folder/file) and `prompts` (the prompts file they came from)")
    if rank == 0:
        # paths compared by what they name (a moved run folder resumes); the pairs' and prompts' content must not change
        write_manifest(out, "train", asdict(cfg), {"seed": cfg.seed}, [cfg.pairs, cfg.prompts], check_inputs=True)
    pairs, prompts, base = load_pairs(cfg.pairs, cfg.prompts, cfg.on_error, out if rank == 0 else None)
    torch.manual_seed(cfg.seed)
    model, processor = load_vlm(cfg.model, options=cfg if cfg.placed_by_map else replace(LoadOptions.of(cfg), device=device))
    examples = prepare_examples(pairs, prompts, base, processor, train_max_length(model, cfg.max_length), cfg.on_error,
                                out if rank == 0 else None, cfg.max_image_pixels)
    with whole_model_loading(acc):  # rank 0 alone loads the reference: never a partitioned (ZeRO-3) load
        ref = _reference(cfg, [e.pair for e in examples], prompts, base, rank, out)
    if cfg.quantized:  # QLoRA
        model = prepare_quantized(model, cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, lora=cfg.finetune == "lora")
    model = setup_trainable(model, cfg.finetune, cfg.freeze_vision, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    return model, processor, examples, ref


def train_dpo(cfg: DPOConfig, stop_after_step: int | None = None) -> dict[str, Any]:
    """Run DPO (module docstring); returns a summary with the checkpoint folders and the log.

    ``stop_after_step`` ends the run early after that step (as a kill would; the same command
    continues it from the last checkpoint). Every process fingerprints its final trainable
    weights; rank 0 checks they agree (data parallel must keep the replicas identical).
    """
    if not cfg.model:  # no silent default: the shipped sandbox policy is not anyone's model
        raise ConfigError("train: give --model (or model in the config): the starting policy")
    out = Path(cfg.out)
    acc = make_accelerator(cfg, out)  # a device map places the model itself
    rank, world = acc.process_index, acc.num_processes
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _recover_resume(out / "resume")
    model, processor, examples, ref = _prepare(cfg, acc, out)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    min_size = world * cfg.grad_accum
    spe = len(epoch_batches(len(examples), cfg.batch_size, 0, cfg.seed, min_size))
    if spe == 0:
        raise ConfigError(f"{len(examples)} pairs make no batch of >= {min_size} (processes x grad_accum)")
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * spe))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, cfg.warmup_ratio))
    sharded = is_sharded(acc)
    start = _resume_step(out / "resume") if sharded else _load_resume(out / "resume", model, opt, sched)
    done_file = out / "train.json"
    if start >= total and _read_summary(done_file).get("finished"):
        return _read_summary(done_file)  # finished before: nothing to do
    if rank == 0:
        _trim_log(out / "log.jsonl", start)
    configure_deepspeed(acc, cfg)
    model, opt = acc.prepare(model, opt)
    if sharded:  # the sharded optimizer state exists only after prepare
        start = load_resume_sharded(acc, out / "resume", sched)
    model.train()
    start_trackers(acc, cfg)
    t0 = time.time()
    end = min(total, stop_after_step) if stop_after_step is not None else total
    last = _loop(cfg, acc, model, processor, opt, sched, examples, ref, (start, end, total, spe), out)
    last = last or _last_logged(out / "log.jsonl", start)  # killed after its last checkpoint: no step left to run
    for tracker in acc.trackers:  # flush and close (not acc.end_training(): it ends the process group, which iterate reuses)
        tracker.finish()
    # sharded weights differ per process by design; the gathered checkpoint is the one copy
    fingerprints = [] if sharded else _rank_fingerprints(out, acc.unwrap_model(model), rank, world)
    summary = {"finished": end >= total, "pairs": len(examples), "steps": total, "steps_per_epoch": spe, "resumed_from": start,
               "seconds": round(time.time() - t0, 2), "checkpoints": [str(p) for p in list_checkpoints(out)], "last": last,
               "rank_weight_fingerprints": fingerprints, "rejected": rejects_count(out)}
    if rank == 0:  # atomically: a kill mid-write must not leave an empty summary
        tmp = done_file.with_name(done_file.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, done_file)
    return summary


def _loop(cfg: DPOConfig, acc, model, processor, opt, sched, examples: list[TrainExample], ref: dict,
          steps: tuple[int, int, int, int], out: Path) -> dict[str, Any]:
    """Optimizer steps ``start..end`` (of ``total``), logging each and checkpointing at the save points."""
    start, end, total, spe = steps
    rank, world = acc.process_index, acc.num_processes
    params = [p for p in model.parameters() if p.requires_grad]
    saves = _save_points(spe, total, cfg.checkpoints_per_epoch)
    last: dict[str, Any] = {}
    log_file = (out / "log.jsonl").open("a") if rank == 0 else None
    try:
        with progress_bar("dpo", cfg.progress and rank == 0) as prog:
            batches: dict[int, list[list[int]]] = {}  # the current epoch's order, shuffled once
            for step in range(start, end):
                epoch, k = divmod(step, spe)
                if epoch not in batches:
                    batches = {epoch: epoch_batches(len(examples), cfg.batch_size, epoch, cfg.seed, world * cfg.grad_accum)}
                batch = batches[epoch][k]
                stats = _step(model, processor, examples, micro_batches(batch, rank, world, cfg.grad_accum), ref, cfg, len(batch), world, acc)
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                last = {"step": step + 1, "epoch": round((step + 1) / spe, 4), "lr": sched.get_last_lr()[0],
                        **{key: round(v, 6) for key, v in stats.items()}}
                if log_file:
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                acc.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=step + 1)
                prog(step + 1, total, f"loss {last['loss']:.4f} acc {last['acc']:.2f}")
                if step + 1 in saves:
                    _checkpoint(acc, out, step + 1, spe, model, processor, opt, sched, cfg, last)
    finally:
        if log_file:
            log_file.close()
    return last
