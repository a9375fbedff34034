"""Packed suffix scoring: every suffix of one prefix in ONE sequence, separated by a block mask.

Why: the batched shared-prefix path (``prefix._suffix_batch_logits``) gives each suffix its own
batch row and therefore its own copy of the prefix KV cache: with a 576-token image that copy,
and every row's attention over it, costs several times the suffix tokens themselves (measured
4.7x the lower bound at LLaVA-1.5 proportions). Packing runs the suffixes of one prefix as one
batch-1 sequence on the single prefix cache, so each suffix token is computed once and the
prefix is read once per layer: the cost of one forward over all suffix tokens.

How: suffixes ``s_1 .. s_k`` (lengths ``l_i``, total ``S``) are concatenated after a prefix of
``P`` tokens. The 4-D additive mask [1, 1, S, P + S] lets a token of ``s_i`` see the whole
prefix and the earlier tokens of ``s_i`` only (a block-diagonal causal mask over the suffix
part); ``position_ids`` restart at ``P + rope_delta`` for each suffix (1-D, or the same value on
the 3 axes of multimodal RoPE), so every token sits exactly where it sits in its own full
prompt. transformers' ``create_causal_mask`` returns a 4-D mask unchanged (``masking_utils.
_preprocess_mask_arguments``), and the ``sdpa`` and ``eager`` attention functions add it to the
scores, so the mask is an additive float mask in the model's dtype (0 = attend, dtype min =
masked), which both accept. Other attention implementations (flash attention, flex attention,
paged caches) take no such mask: :func:`check_packable` refuses them, and the caller falls
back to the batched path. Each forward runs on a fresh ``DynamicCache`` whose layers are the
prefix tensors themselves (``DynamicLayer.update`` concatenates into new tensors), so the
shared prefix cache is never written to and needs no ``crop`` afterwards.

Chunks: suffixes are packed in order into chunks of at most ``pack_tokens`` tokens (a longer
single suffix forms its own chunk), which bounds the mask (S x (P + S)) and the activations.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from transformers.cache_utils import DynamicCache

#: attention implementations that add a custom 4-D float mask to the attention scores
PACKABLE_ATTENTION = ("sdpa", "eager")


def attention_implementation(model) -> str:
    """The text model's attention implementation (``sdpa``, ``eager``, ``flash_attention_2``, ...)."""
    cfg = model.config
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    return str(getattr(text, "_attn_implementation", None) or getattr(cfg, "_attn_implementation", None) or "eager")


def check_packable(model) -> None:
    """Raise ``NotImplementedError`` (the reason) when the model's attention cannot take a 4-D block mask."""
    impl = attention_implementation(model)
    if impl not in PACKABLE_ATTENTION:
        raise NotImplementedError(f"attention implementation {impl!r} takes no custom 4-D attention mask "
                                  f"(packing needs one of {', '.join(PACKABLE_ATTENTION)})")


def pack_chunks(lengths: Sequence[int], pack_tokens: int) -> list[list[int]]:
    """Indices of the non-empty suffixes, in order, grouped so each group has at most ``pack_tokens`` tokens.

    A suffix longer than ``pack_tokens`` forms a group of its own (it cannot be split).
    """
    if pack_tokens < 1:
        raise ValueError(f"pack_tokens must be >= 1, got {pack_tokens}")
    chunks: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if n <= 0:
            continue
        if cur and total + n > pack_tokens:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        chunks.append(cur)
    return chunks


def block_mask(prefix_len: int, lengths: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """Additive mask [1, 1, S, P + S]: 0 where a suffix token may attend (the prefix, its own earlier tokens), dtype min elsewhere."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    s = int(seg.numel())
    idx = torch.arange(s)
    allowed = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    full = torch.cat([torch.ones(s, prefix_len, dtype=torch.bool), allowed], dim=1)
    mask = torch.zeros(s, prefix_len + s, dtype=dtype)
    mask.masked_fill_(~full, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def _model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def packed_logits(model, enc, suffixes: Sequence[Sequence[int]], last_only: bool) -> torch.Tensor:
    """Float32 logits of one packed chunk of non-empty suffixes after the prefix ``enc`` (an ``EncodedPrefix``).

    ``last_only``: logits [k, V] at each suffix's last token (the lm head runs on those k
    positions only where the model takes ``logits_to_keep``); otherwise [S, V] for every token.
    """
    dev = next(model.parameters()).device
    lengths = [len(s) for s in suffixes]
    if min(lengths) < 1:
        raise ValueError("packed_logits needs non-empty suffixes")
    ids = torch.tensor([t for s in suffixes for t in s], dtype=torch.long)[None]
    offsets = torch.cat([torch.arange(n) for n in lengths])
    positions = (enc.length + enc.rope_delta + offsets)[None]
    if enc.mrope:  # text tokens: the same position on the temporal, height and width axes
        positions = positions[None].expand(3, -1, -1)
    mask = block_mask(enc.length, lengths, _model_dtype(model), dev)
    cache = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in enc.cache.layers])
    ends = torch.tensor(lengths).cumsum(0) - 1
    kw = {}
    keep = last_only and _accepts_logits_to_keep(model)
    if keep:
        kw["logits_to_keep"] = ends.to(dev)
    out = model(input_ids=ids.to(dev), attention_mask=mask, position_ids=positions.to(dev), cache=cache, use_cache=True, **kw)
    logits = out.logits[0].float()
    if last_only and not keep:
        logits = logits[ends.to(logits.device)]
    return logits
