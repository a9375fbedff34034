"""Scale features of ``rlaifv train``, all through accelerate / transformers / PEFT (issue 14, item 2).

* Mixed precision: ``Accelerator(mixed_precision=no|bf16|fp16)``; the forward runs under
  autocast (bf16 works on the CPU too), the weights and optimizer state stay in their dtype.
  fp16 on the CPU is refused (accelerate 1.16 accepts it there but runs without autocast).
* Gradient checkpointing: transformers' ``activation_checkpointing_enable`` (formerly
  ``gradient_checkpointing_enable``), non-reentrant; with LoRA the input embeddings require
  grads so the checkpointed blocks see a grad-requiring input.
* QLoRA: 4/8-bit weights (``LoadOptions.load_in_4bit``) are prepared for training by
  ``peft.prepare_model_for_kbit_training`` before the LoRA adapter is added.
* Tracking: ``report_to`` = accelerate's trackers (``log_with``), one ``log`` per optimizer step
  into ``logging_dir`` (default ``<out>/logs``); a missing tracker package is a one-line error.
* Sharded engines (DeepSpeed ZeRO, FSDP; ``configs/accelerate/``): checkpoints are gathered by
  ``accelerator.get_state_dict`` on every rank (a collective) and written by the main process
  with ``save_pretrained(state_dict=...)``; the resume state is accelerate's own
  ``save_state`` / ``load_state`` (sharded optimizer state); the reference pass runs outside
  ZeRO-3's partitioned init so the reference model is whole while it scores the pairs; the
  DeepSpeed micro-batch / clipping come from the train config. An accelerate config asking for
  FSDP / DeepSpeed that accelerate did not apply (CPU processes) is an error, not a DDP run.
* ``save_total_limit``: older ``step-N/`` folders are deleted once a newer one is complete,
  never one an iteration selected (``done.json`` / ``selection.json`` next to the run folder).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from ..config import ConfigError

MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")
REPORT_TO_CHOICES = ("none", "tensorboard", "wandb", "all")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
TRACKER_PROJECT = "rlaifv-train"


def check_report_to(report_to: str) -> None:
    """A named tracker whose package is missing: one line naming the package (``all``: whatever is installed)."""
    for pkg_names in ([TRACKER_PACKAGES[report_to]] if report_to in TRACKER_PACKAGES else []):
        if not any(importlib.util.find_spec(p) is not None for p in pkg_names):
            raise ConfigError(f"train.report_to {report_to}: the {pkg_names[0]} package is not installed; "
                              f"pip install {pkg_names[0]} (or report_to none)")


def logging_dir(cfg: Any, out: Path) -> Path:
    """Where the trackers write: ``cfg.logging_dir``, else ``<out>/logs``."""
    return Path(cfg.logging_dir) if cfg.logging_dir else out / "logs"


def make_accelerator(cfg: Any, out: Path):
    """The run's ``Accelerator``: device, mixed precision and trackers from the train config.

    The config's ``mixed_precision`` wins over an accelerate config file's (so a resumed run and
    its manifest always agree on it).
    """
    from accelerate import Accelerator

    from accelerate.state import AcceleratorState

    check_report_to(cfg.report_to)
    log_with = None if cfg.report_to == "none" else cfg.report_to
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        # another run in this process (tests, a notebook) used another precision: accelerate keeps
        # one per process and refuses a change; drop that part (the process group stays)
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        acc = Accelerator(cpu=cfg.device == "cpu" and not cfg.placed_by_map, mixed_precision=cfg.mixed_precision,
                          log_with=log_with, project_dir=str(logging_dir(cfg, out)))
    except ValueError as e:
        raise ConfigError(f"train.mixed_precision {cfg.mixed_precision}: {str(e).strip().splitlines()[0]}") from e
    except ImportError as e:  # e.g. a DeepSpeed accelerate config without deepspeed installed
        raise ConfigError(f"accelerate: {str(e).strip().splitlines()[0]}") from e
    _refuse_silent_unsharding(acc)
    if cfg.mixed_precision != "no" and not acc.native_amp and not is_sharded(acc):
        # accelerate 1.16 accepts fp16 on the CPU but then runs without autocast: never silently full precision
        raise ConfigError(f"train.mixed_precision {cfg.mixed_precision}: not available on {acc.device} "
                          "(accelerate runs fp16 autocast on GPUs only); use bf16 or no")
    return acc


def _refuse_silent_unsharding(acc) -> None:
    """An accelerate config asking for FSDP / DeepSpeed that accelerate did not apply: an error,
    never a silent data-parallel run. accelerate 1.16 turns ``ACCELERATE_USE_FSDP`` into FSDP only
    for GPU-type process groups (``AcceleratorState``: MULTI_GPU/XPU/NPU/..., not MULTI_CPU) and
    DeepSpeed only without ``cpu=True``; CPU processes (gloo) stay plain DDP."""
    from accelerate.utils import parse_flag_from_env

    for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if parse_flag_from_env(env) and not is_sharded(acc):
            raise ConfigError(f"the accelerate config asks for {name}, but accelerate runs these processes as "
                              f"{str(acc.distributed_type).split('.')[-1]} on {acc.device.type}: accelerate enables {name} on "
                              "GPU-type devices only; launch on GPUs, or use a DDP config (configs/accelerate/ddp_8gpu.yaml)")


def start_trackers(acc, cfg: Any) -> None:
    """``init_trackers`` with the config's scalar fields (trackers' hparams take only scalars)."""
    if cfg.report_to == "none":
        return
    from dataclasses import asdict

    hparams = {k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
    acc.init_trackers(TRACKER_PROJECT, config=hparams)


def enable_gradient_checkpointing(model: nn.Module, lora: bool) -> None:
    """Recompute activations in backward (less memory, ~1/3 more compute); same loss and gradients."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 name (gradient_checkpointing_enable: deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:  # the frozen embeddings' output must require grad for the checkpointed blocks' LoRA weights
        model.enable_input_require_grads()


def prepare_quantized(model: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    """QLoRA: PEFT's preparation of 4/8-bit weights (norms in fp32, input grads, checkpointing)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:  # ours, not PEFT's (which enables it only when it detects k-bit weights)
        enable_gradient_checkpointing(model, lora=True)
    return model


def is_sharded(acc) -> bool:
    """True under DeepSpeed or FSDP: weights / optimizer state are split across processes."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


@contextlib.contextmanager
def whole_model_loading(acc) -> Iterator[None]:
    """Load models whole inside (ZeRO-3's partitioned ``zero.Init`` off): for the reference pass,
    which rank 0 runs alone (a partitioned load is a collective and its weights are empty shards)."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        yield
        return
    with plugin.zero3_init_context_manager(enable=False):
        yield


def configure_deepspeed(acc, cfg: Any) -> None:
    """Under DeepSpeed, before ``prepare``: the engine's per-GPU micro-batch, accumulation and
    clipping from the train config (the loop feeds batches itself, so accelerate cannot infer the
    micro-batch from a DataLoader; its error message names this key as the fix)."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    if cfg.grad_accum != 1:  # the engine would divide each micro-batch loss by its own accumulation count again
        raise ConfigError("train.grad_accum > 1 is not supported under DeepSpeed; raise batch_size (pairs per step, all GPUs) instead")
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = max(1, -(-cfg.batch_size // acc.num_processes))
    ds["gradient_accumulation_steps"] = 1
    if cfg.max_grad_norm > 0:
        ds["gradient_clipping"] = cfg.max_grad_norm


def gathered_state(acc, model) -> dict | None:
    """Every process must call this at a save point under DeepSpeed / FSDP (a collective); the
    main process gets the whole state dict (on CPU under FSDP), others may get an empty one.
    None when nothing is sharded (the main process saves the unwrapped model directly)."""
    return acc.get_state_dict(model) if is_sharded(acc) else None


def save_from_state(model: nn.Module, processor, folder: Path, state: dict, cfg: Any) -> None:
    """Write a checkpoint folder from a gathered ``state`` (keys of the unwrapped model).

    Full fine-tuning and LoRA adapter folders: ``save_pretrained(state_dict=state)``. Merged
    LoRA: the sharded model cannot be merged in place, so a CPU copy of the starting model gets
    the same adapter, loads ``state`` and is merged (the main process needs the model's size in RAM).
    """
    from .model_setup import save_model

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and cfg.merge_lora:
        from dataclasses import replace

        from ..models.load import load_vlm
        from ..models.options import LoadOptions
        from .model_setup import setup_trainable

        base, _ = load_vlm(cfg.model, options=replace(LoadOptions.of(cfg), device="cpu", device_map=None))
        copy = setup_trainable(base, "lora", cfg.freeze_vision, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        missing, unexpected = copy.load_state_dict({k: v.to("cpu") for k, v in state.items()}, strict=False)
        if unexpected or [k for k in missing if "lora_" in k]:
            raise RuntimeError(f"gathered state does not fit the LoRA model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        save_model(copy, processor, folder, merge_lora=True, base=cfg.model)
        return
    model.save_pretrained(folder, state_dict=state, is_main_process=True)
    if hasattr(model, "peft_config"):
        from ..models.load import record_adapter_base

        record_adapter_base(folder, cfg.model)
    processor.save_pretrained(folder)


def protected_checkpoints(out: Path) -> set[Path]:
    """Checkpoints an iteration selected: ``selected`` of ``done.json`` / ``selection.json`` beside
    the run folder (``rlaifv iterate`` trains into ``iter-i/train`` and records there)."""
    keep: set[Path] = set()
    for name in ("done.json", "selection.json"):
        f = out.parent / name
        if not f.exists():
            continue
        try:
            selected = json.loads(f.read_text()).get("selected")
        except json.JSONDecodeError as e:  # a torn record must not let a selected checkpoint be deleted
            raise ConfigError(f"{f}: not valid JSON ({e}); cannot tell which checkpoint is selected, nothing deleted") from e
        if selected:
            keep.add(Path(selected).resolve())
    return keep


def prune_checkpoints(checkpoints: list[Path], limit: int | None, protect: set[Path]) -> list[Path]:
    """Delete all but the last ``limit`` of ``checkpoints`` (step order), never a protected one;
    returns the deleted folders (None / 0: keep all)."""
    if not limit:
        return []
    doomed = [p for p in checkpoints[:-limit] if p.resolve() not in protect]
    if doomed:  # the kept newest one is on disk (fsync'd) before anything older is deleted
        _fsync_tree(checkpoints[-1])
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_resume_sharded(acc, folder: Path, step: int, sched) -> None:
    """Every process: accelerate's ``save_state`` (sharded weights and optimizer state, RNG per
    rank) into ``folder.tmp/accelerate``; the main process adds ``state.json`` (written last:
    what ``dpo._recover_resume`` takes as complete) and swaps the folder in."""
    import os

    import torch

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "accelerate"))
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"step": step, "scheduler": sched.state_dict(), "rng": torch.get_rng_state().tolist(), "sharded": True}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_resume_sharded(acc, folder: Path, sched) -> int:
    """Restore a :func:`save_resume_sharded` state after ``accelerator.prepare``; returns its step (0: none)."""
    state_file = folder / "state.json"
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    if not state.get("sharded"):
        raise ConfigError(f"{folder}: resume state written without DeepSpeed/FSDP; continue it with the same launch setup")
    acc.load_state(str(folder / "accelerate"))
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])


def _fsync_tree(folder: Path) -> None:
    """fsync every file of ``folder`` and the folder itself (so a crash cannot leave only the deleted ones)."""
    import os

    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
