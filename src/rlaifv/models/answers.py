"""Per-token log-probs of N candidate answers to one (image, question) under a VLM.

Why: best-of-N scores every candidate of a prompt under one or two models (the DPO-aligned
model and its reference, or the policy for the perplexity baseline). The N answers share the
image and the whole prompt, so by default the prompt (image included) runs **once** per model
and the answers are scored against its KV cache (``models/prefix.py``: ``encode_prompt`` +
``encode_prefix`` + ``score_suffix_tokens``): by default all N answers packed into one sequence
with a block mask (``mode="packed"``, ``models/packed.py``), or one batch row and one cache copy
per answer (``mode="batched"``, the fallback for models that cannot pack). The naive way, one full
forward of image + prompt + answer per candidate, is kept for checks and benchmarks and as
the fallback for models the shared-prefix path cannot serve (``NotImplementedError`` from
``encode_prefix``, e.g. sliding-window caches), with a one-time warning.

Answer tokens are ``chat.answer_ids(processor, text)``: the answer's tokens followed by the
tokenizer's EOS, exactly the tokens DPO training supervises (``chat.collate`` labels), so the
log-probs here are the terms of the DPO implicit reward.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from PIL import Image

from .chat import IGNORE_INDEX, answer_ids, collate, encode_prompt
from .prefix import PACK_TOKENS, check_prefix_mode, encode_prefix, score_suffix_tokens

_WARNED: set[str] = set()


@torch.no_grad()
def answer_logprobs(
    model, processor, image: Image.Image, question: str, answers: Sequence[str], batch_size: int = 16, share_prefix: bool = True,
    mode: str = "packed", pack_tokens: int = PACK_TOKENS,
) -> list[torch.Tensor]:
    """Per answer, float32 log-probs [T_i] of its tokens (answer + EOS) after the templated prompt.

    ``mode``: ``packed`` (default) encodes image + prompt once and scores the answers packed in
    one sequence on its KV cache (``pack_tokens`` per forward); ``batched`` batches them
    (``batch_size`` per forward) on copies of that cache; ``naive`` (or ``share_prefix=False``)
    runs :func:`answer_logprobs_naive`. All agree within float rounding (tested to 1e-4 on
    summed log-probs).
    """
    check_prefix_mode(mode)
    if not answers:
        return []
    if not share_prefix or mode == "naive":
        return answer_logprobs_naive(model, processor, image, question, answers, batch_size)
    suffixes = [answer_ids(processor, a) for a in answers]
    try:
        enc = encode_prefix(model, encode_prompt(processor, image, question))
    except NotImplementedError as e:
        name = type(model).__name__
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"shared-prefix scoring unavailable for {name} ({e}); scoring each answer with a full forward", stacklevel=2)
        return answer_logprobs_naive(model, processor, image, question, answers, batch_size)
    return score_suffix_tokens(model, enc, suffixes, batch_size, mode, pack_tokens)


@torch.no_grad()
def answer_logprobs_naive(
    model, processor, image: Image.Image, question: str, answers: Sequence[str], batch_size: int = 16
) -> list[torch.Tensor]:
    """The same log-probs from one full forward (image + prompt + answer) per answer, batched.

    Each row re-encodes the image and the prompt: what a plain DPO log-prob computation does.
    Right padding (``chat.collate``) keeps every real token at its unpadded position.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(answers), batch_size):
        chunk = list(answers[start : start + batch_size])
        batch = collate(processor, [image] * len(chunk), [question] * len(chunk), chunk)
        labels = batch.pop("labels")
        logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row in range(len(chunk)):
            pos = (labels[row] != IGNORE_INDEX).nonzero().flatten()
            out.append(logp[row, pos - 1, labels[row, pos]])
    return out
