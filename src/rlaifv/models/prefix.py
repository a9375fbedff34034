"""Score many token suffixes after one shared, image-bearing prefix (one KV cache per image).

Why: the conquer stage asks a labeler many yes/no questions about the same image, and
best-of-N / DPO score many candidate answers to the same prompt. A naive forward per question
re-encodes the image and re-runs every prompt token each time; here the image and the common
prompt prefix run once (``use_cache=True``), and only the suffixes run, batched, on top of a
per-batch copy of that cache.

How: ``split_prefix`` renders each full prompt with the processor's chat template
(``chat.encode_prompt``), takes the longest common token prefix (it must hold every image
token) and returns the prefix's model inputs plus each question's remaining token ids.
``encode_prefix`` runs the prefix once. Each batch of suffixes is right-padded and run against
a fresh batch-sized copy of the prefix cache (the shared cache itself is never written to),
with an attention mask over prefix + suffix and explicit ``position_ids`` continuing from the
prefix length. Right padding keeps every real token at the same position as in the unpadded
full prompt, so results match a full forward up to float rounding.

Positions: Llama-style models (Idefics3/SmolVLM, LLaVA) use 1-D positions ``prefix length +
i``. Multimodal-RoPE models (Qwen2-VL, Qwen2.5-VL: a ``get_rope_index`` on the inner model)
get the prefix's 3-D positions and its ``rope_delta`` from ``get_rope_index`` (image tokens
take (t, h, w) grid positions, so the next free position is ``length + rope_delta``); the
suffixes, which hold no image tokens, then run at ``length + rope_delta + i`` on all three
axes: exactly what a full forward computes for text after the last image. The positions are
always passed explicitly, so the model's cached ``rope_deltas`` state is neither read nor
needed.

Limits: plain (non-sliding) ``DynamicCache`` layers. Other cache kinds or position schemes
raise ``NotImplementedError``; ``score_yes_no_shared`` then falls back to naive per-question
forwards (``generate.score_yes_no``) with a one-time warning naming the reason.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from PIL import Image
from transformers.cache_utils import DynamicCache, DynamicLayer

from .chat import _TEXT_KEYS, encode_prompt
from .yesno import YesNoIds, p_yes_no, yes_no_ids

PrefixInputs = dict[str, torch.Tensor]


@dataclass
class EncodedPrefix:
    """A prefix that has been run once: its KV cache (batch 1), length and last-position logits.

    ``last_logits`` [V] predicts the first suffix token. ``cache`` is read-only for scoring:
    every batch works on its own expanded copy.
    """

    cache: DynamicCache
    length: int
    last_logits: torch.Tensor
    rope_delta: int = 0  # multimodal RoPE: the first suffix token sits at position length + rope_delta
    mrope: bool = False  # positions are (3, B, S) (Qwen2-VL style) rather than (B, S)


# --------------------------------------------------------------------------- splitting


def image_token_ids(processor) -> set[int]:
    """Ids of the processor's image-related special tokens (``image_token_id``, ``fake_image_token_id``, ...)."""
    ids = {v for k, v in vars(processor).items() if k.endswith("image_token_id") and isinstance(v, int)}
    if not ids:
        raise ValueError(f"{type(processor).__name__} exposes no *image_token_id attribute; cannot check the prefix")
    return ids


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows)
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


def _check_same_extras(encs: Sequence[PrefixInputs]) -> None:
    """All prompts of one image must carry identical pixel inputs, or a shared prefix is wrong."""
    for k, v in encs[0].items():
        if k in _TEXT_KEYS:
            continue
        for e in encs[1:]:
            if not torch.equal(e[k], v):
                raise ValueError(f"processor produced different {k!r} for prompts of the same image")


def split_prefix(
    processor, image: Image.Image, questions: Sequence[str], history: Sequence[tuple[str, str]] = ()
) -> tuple[PrefixInputs, list[list[int]]]:
    """(prefix model inputs, suffix token ids per question) for questions about one image.

    The prefix is the longest common token prefix of the fully rendered prompts, shortened so
    that every suffix keeps at least one token (the last logit then always comes from a suffix
    position). ``prefix + suffix_i`` is exactly question i's prompt as ``encode_prompt`` makes
    it. ``history`` (earlier turns) is shared by all questions. Raises ``ValueError`` if an
    image token would fall in a suffix (questions differing before the image, e.g. a template
    that puts the text first).
    """
    if not questions:
        raise ValueError("split_prefix needs at least one question")
    encs = [encode_prompt(processor, image, q, history) for q in questions]
    rows = [e["input_ids"][0].tolist() for e in encs]
    _check_same_extras(encs)
    n = min(_common_prefix_len(rows), min(len(r) for r in rows) - 1)
    img_ids = image_token_ids(processor)
    for q, r in zip(questions, rows):
        if img_ids & set(r[n:]):
            raise ValueError(
                f"the shared prefix ({n} tokens) does not contain all image tokens of the prompt for {q!r}; "
                "the prompts differ before the image ends, so the image cannot be encoded once"
            )
    prefix: PrefixInputs = {}
    for k, v in encs[0].items():
        prefix[k] = v[:, :n] if k in _TEXT_KEYS else v
    if "attention_mask" not in prefix:
        prefix["attention_mask"] = torch.ones_like(prefix["input_ids"])
    return prefix, [r[n:] for r in rows]


# --------------------------------------------------------------------------- running


def _rope_index_fn(model):
    """The inner model's ``get_rope_index`` (multimodal RoPE), or None for 1-D positions.

    Raises ``NotImplementedError`` for a multimodal-RoPE config without that method.
    """
    for m in (getattr(model, "model", None), model):
        fn = getattr(m, "get_rope_index", None)
        if callable(fn):
            return fn
    text_cfg = model.config.get_text_config(decoder=True)
    rope = getattr(text_cfg, "rope_parameters", None) or getattr(text_cfg, "rope_scaling", None) or {}
    if isinstance(rope, Mapping) and "mrope_section" in rope:
        raise NotImplementedError(f"{type(model).__name__} uses multimodal (3-D) rotary positions but has no get_rope_index")
    return None


def _prefix_positions(model, kw: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
    """(position_ids for the prefix forward or None for the default, rope delta of later text tokens)."""
    fn = _rope_index_fn(model)
    if fn is None:
        return None, 0
    if "mm_token_type_ids" not in kw:
        raise NotImplementedError(f"{type(model).__name__}: multimodal (3-D) rotary positions need the processor's mm_token_type_ids, which the prefix lacks")
    params = inspect.signature(fn).parameters
    args = {k: v for k, v in kw.items() if k in params and k != "input_ids"}
    positions, deltas = fn(kw["input_ids"], **args)
    if positions.ndim != 3 or positions.shape[0] != 3 or deltas.numel() != 1:
        raise NotImplementedError(
            f"{type(model).__name__}.get_rope_index returned positions {tuple(positions.shape)} and deltas "
            f"{tuple(deltas.shape)}; shared-prefix scoring supports multimodal RoPE only as (3, 1, n) positions "
            "with one delta (Qwen2-VL style)"
        )
    return positions, int(deltas.reshape(-1)[0])


#: Models whose prompt attends bidirectionally (prefix-LM): a token's state depends on later prompt tokens.
PREFIX_LM_MODEL_TYPES = ("paligemma",)


def check_prefix_shareable(model, inputs: Mapping[str, torch.Tensor]) -> None:
    """Raise ``NotImplementedError`` (the reason) when a prompt's KV cache cannot serve other suffixes."""
    if getattr(model.config, "model_type", None) in PREFIX_LM_MODEL_TYPES:
        raise NotImplementedError(f"{type(model).__name__} attends bidirectionally over the whole prompt (prefix-LM), "
                                  "so a shared prompt prefix is not the prefix of each full prompt")
    if "cross_attention_mask" in inputs:
        raise NotImplementedError(f"{type(model).__name__} reads the image through cross-attention layers whose per-token "
                                  "mask the suffix forward does not carry")


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_prefix(model, prefix_inputs: Mapping[str, torch.Tensor]) -> EncodedPrefix:
    """Run the prefix (image + common prompt tokens, batch 1) once and keep its KV cache.

    Raises ``NotImplementedError`` for models this module cannot serve (see the module docstring).
    """
    if prefix_inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"prefix batch must be 1, got {prefix_inputs['input_ids'].shape[0]}")
    check_prefix_shareable(model, prefix_inputs)
    dev = _device(model)
    kw = {k: v.to(dev) for k, v in prefix_inputs.items()}
    positions, delta = _prefix_positions(model, kw)
    if positions is not None:
        kw["position_ids"] = positions
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1
    out = model(**kw, use_cache=True)
    cache = out.cache
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        kinds = sorted({type(layer).__name__ for layer in getattr(cache, "layers", [])})
        raise NotImplementedError(
            f"shared-prefix scoring needs a DynamicCache of plain DynamicLayer layers; got {type(cache).__name__} {kinds}"
        )
    return EncodedPrefix(
        cache=cache, length=prefix_inputs["input_ids"].shape[1], last_logits=out.logits[0, -1].float(),
        rope_delta=delta, mrope=positions is not None,
    )


def _as_encoded(model, prefix: Mapping[str, torch.Tensor] | EncodedPrefix) -> EncodedPrefix:
    return prefix if isinstance(prefix, EncodedPrefix) else encode_prefix(model, prefix)


def expand_cache(cache: DynamicCache, batch: int) -> DynamicCache:
    """A new DynamicCache holding ``batch`` copies of a batch-1 cache; the source is not touched.

    The layers are rebuilt from broadcast views; ``DynamicLayer.update`` concatenates into new
    tensors, so neither building nor using the copy writes to the shared prefix tensors.
    """
    data = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        if k.shape[0] != 1:
            raise ValueError(f"expected a batch-1 prefix cache, got batch {k.shape[0]}")
        data.append((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)))
    return DynamicCache(ddp_cache_data=data)


def _suffix_batch_logits(model, enc: EncodedPrefix, batch: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits [B, S, V] of a right-padded batch of non-empty suffixes run after the prefix."""
    dev = _device(model)
    width = max(len(s) for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), enc.length + width, dtype=torch.long)
    mask[:, : enc.length] = 1
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, enc.length : enc.length + len(s)] = 1
    positions = (enc.length + enc.rope_delta + torch.arange(width)).unsqueeze(0).expand(len(batch), -1)
    if enc.mrope:  # text tokens: the same position on the temporal, height and width axes
        positions = positions.unsqueeze(0).expand(3, -1, -1)
    out = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=positions.to(dev),
        cache=expand_cache(enc.cache, len(batch)),
        use_cache=True,
    )
    return out.logits.float()


def _batches(suffixes: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of the non-empty suffixes, grouped into batches (sorted by length to limit padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted((i for i, s in enumerate(suffixes) if len(s) > 0), key=lambda i: len(suffixes[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_suffixes_last_logits(
    model, prefix: Mapping[str, torch.Tensor] | EncodedPrefix, suffixes: Sequence[Sequence[int]], batch_size: int = 16
) -> torch.Tensor:
    """Float32 logits [len(suffixes), V] at each suffix's last token (prefix + suffix context).

    ``prefix`` is either prefix model inputs (run here once) or an ``EncodedPrefix`` to reuse
    across calls. An empty suffix gets the prefix's last-position logits.
    """
    enc = _as_encoded(model, prefix)
    out = enc.last_logits.unsqueeze(0).repeat(len(suffixes), 1)
    for idx in _batches(suffixes, batch_size):
        logits = _suffix_batch_logits(model, enc, [suffixes[i] for i in idx])
        last = torch.tensor([len(suffixes[i]) - 1 for i in idx], device=logits.device)
        out[idx] = logits[torch.arange(len(idx), device=logits.device), last].to(out.device)
    return out


@torch.no_grad()
def score_suffix_tokens(
    model, prefix: Mapping[str, torch.Tensor] | EncodedPrefix, suffixes: Sequence[Sequence[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """Per suffix, float32 log-probs [len(suffix)] of each suffix token given prefix + earlier suffix tokens.

    Token 0 is scored by the prefix's last position. Sum a tail slice to get an answer's
    sequence log-prob, e.g. with ``prefix = encode_prompt(...)`` and
    ``suffixes = [chat.answer_ids(processor, a) for a in answers]`` (N candidates, one prompt).
    """
    enc = _as_encoded(model, prefix)
    first = torch.log_softmax(enc.last_logits, dim=-1)
    out: list[torch.Tensor] = [torch.empty(0, device=first.device) for _ in suffixes]
    for idx in _batches(suffixes, batch_size):
        logits = _suffix_batch_logits(model, enc, [suffixes[i] for i in idx])
        logp = torch.log_softmax(logits, dim=-1)
        for row, i in enumerate(idx):
            toks = torch.tensor(list(suffixes[i]), device=logp.device)
            rest = logp[row, : len(toks) - 1].gather(-1, toks[1:, None]).squeeze(-1)
            out[i] = torch.cat([first[toks[0]].reshape(1).to(rest.device), rest])
    return out


@torch.no_grad()
def score_yes_no_shared(
    model,
    processor,
    images: Sequence[Image.Image],
    questions_per_image: Sequence[Sequence[str]],
    batch_size: int = 16,
    ids: YesNoIds | None = None,
    histories: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> list[list[tuple[float, float]]]:
    """(p_yes, p_no) per question, grouped per image; the image + common prefix run once per image.

    Same numbers as ``generate.score_yes_no`` on the flattened (image, question) pairs, within
    float rounding. ``histories`` (one per image) puts earlier turns before every question.
    Models that shared-prefix scoring cannot serve (``NotImplementedError`` from
    ``encode_prefix``) are scored naively, one full forward per question, with a one-time
    warning naming the reason.
    """
    if len(images) != len(questions_per_image):
        raise ValueError(f"{len(images)} images but {len(questions_per_image)} question lists")
    ids = ids or yes_no_ids(processor)
    results: list[list[tuple[float, float]]] = []
    for j, (image, questions) in enumerate(zip(images, questions_per_image)):
        if not questions:
            results.append([])
            continue
        history = histories[j] if histories is not None else ()
        prefix, suffixes = split_prefix(processor, image, questions, history)
        try:
            enc = encode_prefix(model, prefix)
        except NotImplementedError as e:
            _warn_fallback(model, str(e))
            results.append(_naive_yes_no(model, processor, image, questions, history, batch_size, ids))
            continue
        p_yes, p_no = p_yes_no(score_suffixes_last_logits(model, enc, suffixes, batch_size), ids)
        results.append(list(zip(p_yes.tolist(), p_no.tolist())))
    return results


_WARNED: set[str] = set()


def _warn_fallback(model, reason: str) -> None:
    name = type(model).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"shared-prefix scoring unavailable for {name} ({reason}); scoring each question with a full forward", stacklevel=3)


def _naive_yes_no(model, processor, image, questions, history, batch_size: int, ids: YesNoIds) -> list[tuple[float, float]]:
    from .generate import score_yes_no

    hist = [history] * len(questions) if history else None
    y, n = score_yes_no(model, processor, [image] * len(questions), questions, ids, batch_size, histories=hist)
    return list(zip(y, n))
