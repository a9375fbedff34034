"""Which parameters DPO trains: frozen vision tower, full fine-tuning or LoRA (PEFT) on the text model.

The reference code trains the LLM and projector with the vision tower frozen (full FT), or LoRA
r 64 / alpha 16 / dropout 0.05 on all linear layers except projector, vision tower and lm_head
(rlaif-v-method.md, Sec. 2); these are the defaults here. Module names differ per architecture;
the vision tower and language model are found by the attribute names transformers uses
(``vision_model`` / ``vision_tower`` / ``visual``; ``language_model``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

VISION_ATTRS = ("vision_model", "vision_tower", "visual")


def _inner(model: nn.Module) -> nn.Module:
    return model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model


def vision_tower(model: nn.Module) -> nn.Module:
    """The model's vision encoder (error naming the model class if none is found)."""
    for owner in (_inner(model), model):
        for attr in VISION_ATTRS:
            mod = getattr(owner, attr, None)
            if isinstance(mod, nn.Module):
                return mod
    raise ValueError(f"{type(model).__name__}: no vision tower among attributes {VISION_ATTRS}")


def language_model_prefix(model: nn.Module) -> str:
    """Dotted name of the text decoder inside ``model`` (``model.language_model`` in transformers 5)."""
    names = dict(model.named_modules())
    for name in ("model.language_model", "language_model", "model.text_model"):
        if name in names:
            return name
    raise ValueError(f"{type(model).__name__}: cannot find the language model (tried model.language_model, language_model)")


def lora_target_modules(model: nn.Module, targets: str) -> list[str]:
    """Full names of the LoRA targets: ``all-linear`` = every nn.Linear of the text decoder
    (so never the vision tower, the projector or lm_head), else the comma-separated suffixes
    (e.g. ``q_proj,v_proj``) restricted to the text decoder."""
    prefix = language_model_prefix(model) + "."
    wanted = None if targets == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
    out = [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)
           and (wanted is None or n.rsplit(".", 1)[-1] in wanted)]
    if not out:
        raise ValueError(f"no LoRA target modules match {targets!r} in {type(model).__name__}'s text decoder")
    return out


def setup_trainable(model: nn.Module, finetune: str, freeze_vision: bool, lora_r: int, lora_alpha: int,
                    lora_dropout: float, lora_targets: str) -> nn.Module:
    """Freeze what must not train and (``finetune='lora'``) wrap the model with a PEFT LoRA adapter."""
    if finetune not in ("full", "lora"):
        raise ValueError(f"finetune must be 'full' or 'lora', got {finetune!r}")
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=lora_target_modules(model, lora_targets))
        return get_peft_model(model, cfg)
    if freeze_vision:
        for p in vision_tower(model).parameters():
            p.requires_grad_(False)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (what a resume must restore), on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_model(model: nn.Module, processor, folder: Path, merge_lora: bool, base: str | None = None) -> None:
    """A ``save_pretrained`` folder loadable by plain transformers (LoRA merged) or a PEFT adapter folder.

    An adapter folder records its base model portably (``models.load.record_adapter_base``):
    ``base`` is the starting model as the user named it (default: the path PEFT recorded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and merge_lora:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder)
    else:
        model.save_pretrained(folder)
        if hasattr(model, "peft_config"):
            from ..models.load import record_adapter_base

            record_adapter_base(folder, base or next(iter(model.peft_config.values())).base_model_name_or_path)
    processor.save_pretrained(folder)
