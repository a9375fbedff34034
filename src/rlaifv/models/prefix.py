"""Score many token suffixes after one shared, image-bearing prefix (one KV cache per image).

Why: the conquer stage asks a labeler many yes/no questions about the same image, and
best-of-N / DPO score many candidate answers to the same prompt. A naive forward per question
re-encodes the image and re-runs every prompt token each time; here the image and the common
prompt prefix run once (``use_cache=True``), and only the suffixes run, batched, on top of a
per-batch copy of that cache.

How: ``split_prefix`` renders each full prompt with the processor's chat template
(``chat.encode_prompt``), takes the longest common token prefix (it must hold every image
token) and returns the prefix's model inputs plus each question's remaining token ids.
``encode_prefix`` runs the prefix once. Then, by ``mode``:

* ``packed`` (default): all suffixes of the prefix run as ONE batch-1 sequence on the prefix
  cache with a block-diagonal 4-D mask (``models/packed.py``), chunked to ``pack_tokens``;
  each suffix token is computed once and the prefix cache is not copied. Models whose
  attention takes no custom 4-D mask (flash / flex attention), or whose packed logits differ
  from batched ones in a one-time check per model class (:func:`_verify_packing`), fall back to
  ``batched`` with a one-time warning naming the reason.
* ``batched``: each batch of suffixes is right-padded and run against a fresh batch-sized copy
  of the prefix cache, with an attention mask over prefix + suffix and explicit
  ``position_ids`` continuing from the prefix length. Right padding keeps every real token at
  the same position as in the unpadded full prompt.

Either way the shared cache itself is never written to, and results match a full forward up
to float rounding.

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
from typing import Iterator, Mapping, Sequence

import torch
from PIL import Image
from transformers.cache_utils import DynamicCache, DynamicLayer

from .chat import _TEXT_KEYS, encode_prompt, prompt_text
from .packed import attention_implementation, check_packable, pack_chunks, packed_logits
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

    The image is processed twice, not once per question (:func:`_spliced_rows`): the first and
    last prompts are encoded in full and the others only tokenised, which at 576 image tokens
    costs about as much as the packed forward itself otherwise.
    """
    if not questions:
        raise ValueError("split_prefix needs at least one question")
    encs = [encode_prompt(processor, image, questions[0], history)]
    rows = _spliced_rows(processor, encs[0], [prompt_text(processor, q, history) for q in questions]) if len(questions) > 2 else None
    if rows is not None:
        encs.append(encode_prompt(processor, image, questions[-1], history))
        if encs[-1]["input_ids"][0].tolist() != rows[-1]:
            rows = None
    if rows is None:  # every prompt encoded in full
        encs = [encs[0]] + [encode_prompt(processor, image, q, history) for q in questions[1:]]
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


def _spliced_rows(processor, first: PrefixInputs, texts: Sequence[str]) -> list[list[int]] | None:
    """Every prompt's full token ids from the first prompt's encoding and the text-only tokenisation of all.

    The processor expands the image placeholder(s) into image tokens inside the text common to
    all prompts and tokenises the result; the text after the last image token is tokenised the
    same with or without the expansion. So prompt i = the first prompt's expanded ids up to the
    common (unexpanded) prefix + prompt i's own unexpanded ids after it. None when the first
    prompt's own tail does not survive the expansion unchanged (the caller then encodes every
    prompt in full; it also checks the last prompt against a full encoding).
    """
    tok = processor.tokenizer
    bos = getattr(tok, "bos_token", None)
    # as chat.encode_prompt: a template that writes the BOS itself must not get a second one
    plain = [tok(t, add_special_tokens=False)["input_ids"] if bos and t.startswith(bos) else tok(t)["input_ids"] for t in texts]
    full = first["input_ids"][0].tolist()
    c = _common_prefix_len(plain)
    grow = len(full) - len(plain[0])
    if grow < 0 or full[c + grow :] != plain[0][c:]:
        return None
    return [full[: c + grow] + r[c:] for r in plain]


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

#: how the suffixes of one prefix run: ``packed`` (one sequence, block mask), ``batched`` (one row
#: and one cache copy per suffix), ``naive`` (no shared prefix: a full forward per prompt)
PREFIX_MODES = ("packed", "batched", "naive")
PACK_TOKENS = 2048  # default bound on the tokens of one packed forward

#: (model class, model type, attention implementation) -> None when packing was verified, else why it is refused
_PACK_STATUS: dict[tuple[str, str, str], str | None] = {}


def check_prefix_mode(mode: str) -> None:
    """ValueError naming the valid modes."""
    if mode not in PREFIX_MODES:
        raise ValueError(f"prefix mode must be one of {', '.join(PREFIX_MODES)}; got {mode!r}")


def _pack_key(model) -> tuple[str, str, str]:
    return type(model).__name__, str(getattr(model.config, "model_type", "")), attention_implementation(model)


def _verify_packing(model, enc: EncodedPrefix, suffixes: Sequence[Sequence[int]]) -> str | None:
    """None if packed logits equal batched ones on two short suffixes of this prefix, else the reason.

    Run once per (model class, model type, attention implementation): a model whose attention drops or
    rebuilds a custom 4-D mask lets one packed suffix see another, which this catches before
    any score is used. Tolerance on log-probs: 1e-3 in float32/64, 0.1 in 16-bit dtypes.
    """
    pair = [list(s[:8]) for s in suffixes if len(s) > 0][:2]
    if len(pair) < 2:
        return "unverified"
    packed = torch.log_softmax(packed_logits(model, enc, pair, last_only=True), dim=-1)
    batched = _suffix_batch_logits(model, enc, pair)
    batched = torch.log_softmax(batched[torch.arange(2), torch.tensor([len(s) - 1 for s in pair])], dim=-1)
    diff = (packed - batched.to(packed.device)).abs().max().item()
    tol = 1e-3 if next(model.parameters()).dtype in (torch.float32, torch.float64) else 0.1
    if diff > tol:
        return f"packed log-probs differ from batched ones by {diff:.2e} (> {tol}): the model does not honour a custom 4-D attention mask"
    return None


def _resolve_mode(model, enc: EncodedPrefix, suffixes: Sequence[Sequence[int]], mode: str) -> str:
    """``packed`` if this model can pack (checked once, :func:`_verify_packing`), else ``batched`` with a one-time warning."""
    check_prefix_mode(mode)
    if mode != "packed":
        return mode
    try:
        check_packable(model)
    except NotImplementedError as e:
        _warn_pack_fallback(model, str(e))
        return "batched"
    key = _pack_key(model)
    if _PACK_STATUS.get(key, "unverified") == "unverified":
        _PACK_STATUS[key] = _verify_packing(model, enc, suffixes)
    reason = _PACK_STATUS[key]
    if reason is not None and reason != "unverified":
        _warn_pack_fallback(model, reason)
        return "batched"
    return "packed"


def pack_refusal(model) -> str | None:
    """Why this model's suffixes are not packed (attention implementation, or a failed one-time check), else None.

    None also before the first multi-suffix call has run the check (:func:`_verify_packing`).
    """
    try:
        check_packable(model)
    except NotImplementedError as e:
        return str(e)
    reason = _PACK_STATUS.get(_pack_key(model))
    return None if reason == "unverified" else reason


def _suffix_logits(model, enc: EncodedPrefix, suffixes: Sequence[Sequence[int]], last_only: bool, mode: str,
                   batch_size: int, pack_tokens: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, logits) per non-empty suffix: [V] at its last token (``last_only``) or [len, V] for every token."""
    if _resolve_mode(model, enc, suffixes, mode) == "packed":
        for chunk in pack_chunks([len(s) for s in suffixes], pack_tokens):
            logits = packed_logits(model, enc, [suffixes[i] for i in chunk], last_only)
            if last_only:
                yield from zip(chunk, logits)
            else:
                yield from zip(chunk, logits.split([len(suffixes[i]) for i in chunk]))
        return
    for idx in _batches(suffixes, batch_size):
        logits = _suffix_batch_logits(model, enc, [suffixes[i] for i in idx])
        for row, i in enumerate(idx):
            yield i, (logits[row, len(suffixes[i]) - 1] if last_only else logits[row, : len(suffixes[i])])


@torch.no_grad()
def score_suffixes_last_logits(
    model, prefix: Mapping[str, torch.Tensor] | EncodedPrefix, suffixes: Sequence[Sequence[int]], batch_size: int = 16,
    mode: str = "packed", pack_tokens: int = PACK_TOKENS,
) -> torch.Tensor:
    """Float32 logits [len(suffixes), V] at each suffix's last token (prefix + suffix context).

    ``prefix`` is either prefix model inputs (run here once) or an ``EncodedPrefix`` to reuse
    across calls. An empty suffix gets the prefix's last-position logits. ``mode``: ``packed``
    (default; ``pack_tokens`` per forward) or ``batched`` (``batch_size`` suffixes per forward).
    """
    enc = _as_encoded(model, prefix)
    out = enc.last_logits.unsqueeze(0).repeat(len(suffixes), 1)
    for i, logits in _suffix_logits(model, enc, suffixes, True, mode, batch_size, pack_tokens):
        out[i] = logits.to(out.device)
    return out


@torch.no_grad()
def score_suffix_tokens(
    model, prefix: Mapping[str, torch.Tensor] | EncodedPrefix, suffixes: Sequence[Sequence[int]], batch_size: int = 16,
    mode: str = "packed", pack_tokens: int = PACK_TOKENS,
) -> list[torch.Tensor]:
    """Per suffix, float32 log-probs [len(suffix)] of each suffix token given prefix + earlier suffix tokens.

    Token 0 is scored by the prefix's last position. Sum a tail slice to get an answer's
    sequence log-prob, e.g. with ``prefix = encode_prompt(...)`` and
    ``suffixes = [chat.answer_ids(processor, a) for a in answers]`` (N candidates, one prompt).
    ``mode`` / ``pack_tokens`` / ``batch_size`` as in :func:`score_suffixes_last_logits`.
    """
    enc = _as_encoded(model, prefix)
    first = torch.log_softmax(enc.last_logits, dim=-1)
    out: list[torch.Tensor] = [torch.empty(0, device=first.device) for _ in suffixes]
    for i, logits in _suffix_logits(model, enc, suffixes, False, mode, batch_size, pack_tokens):
        logp = torch.log_softmax(logits, dim=-1)
        toks = torch.tensor(list(suffixes[i]), device=logp.device)
        rest = logp[: len(toks) - 1].gather(-1, toks[1:, None]).squeeze(-1)
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
    mode: str = "packed",
    pack_tokens: int = PACK_TOKENS,
) -> list[list[tuple[float, float]]]:
    """(p_yes, p_no) per question, grouped per image; the image + common prefix run once per image.

    Same numbers as ``generate.score_yes_no`` on the flattened (image, question) pairs, within
    float rounding. ``histories`` (one per image) puts earlier turns before every question.
    ``mode``: ``packed`` (default: all of an image's question suffixes in one sequence with a
    block mask, ``pack_tokens`` per forward), ``batched`` (``batch_size`` suffixes per forward,
    one prefix-cache copy each) or ``naive`` (one full forward per question). Models that
    cannot pack fall back to ``batched``; models that shared-prefix scoring cannot serve at all
    (``NotImplementedError`` from ``encode_prefix``) to ``naive``; each with a one-time warning
    naming the reason.
    """
    if len(images) != len(questions_per_image):
        raise ValueError(f"{len(images)} images but {len(questions_per_image)} question lists")
    check_prefix_mode(mode)
    ids = ids or yes_no_ids(processor)
    results: list[list[tuple[float, float]]] = []
    for j, (image, questions) in enumerate(zip(images, questions_per_image)):
        if not questions:
            results.append([])
            continue
        history = histories[j] if histories is not None else ()
        if mode == "naive":
            results.append(_naive_yes_no(model, processor, image, questions, history, batch_size, ids))
            continue
        prefix, suffixes = split_prefix(processor, image, questions, history)
        try:
            enc = encode_prefix(model, prefix)
        except NotImplementedError as e:
            _warn_fallback(model, str(e))
            results.append(_naive_yes_no(model, processor, image, questions, history, batch_size, ids))
            continue
        p_yes, p_no = p_yes_no(score_suffixes_last_logits(model, enc, suffixes, batch_size, mode, pack_tokens), ids)
        results.append(list(zip(p_yes.tolist(), p_no.tolist())))
    return results


_WARNED: set[str] = set()


def _warn_fallback(model, reason: str) -> None:
    name = type(model).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"shared-prefix scoring unavailable for {name} ({reason}); scoring each question with a full forward", stacklevel=3)


_WARNED_PACK: set[tuple[str, str, str]] = set()


def _warn_pack_fallback(model, reason: str) -> None:
    name, key = type(model).__name__, _pack_key(model)
    if key not in _WARNED_PACK:
        _WARNED_PACK.add(key)
        warnings.warn(f"packed scoring unavailable for {name} ({reason}); scoring the suffixes in batches, one copy of "
                      "the prefix cache per row (slower, same numbers)", stacklevel=4)


def _naive_yes_no(model, processor, image, questions, history, batch_size: int, ids: YesNoIds) -> list[tuple[float, float]]:
    from .generate import score_yes_no

    hist = [history] * len(questions) if history else None
    y, n = score_yes_no(model, processor, [image] * len(questions), questions, ids, batch_size, histories=hist)
    return list(zip(y, n))
