"""Batched generation and yes/no scoring helpers shared by evaluation and the stages."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .chat import collate
from .template import generation_stop_ids
from .yesno import YesNoIds, p_yes_no, yes_no_ids


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    seed: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Answer each (image, question); sampling is seeded per call when ``seed`` is given."""
    if seed is not None:
        torch.manual_seed(seed)
    tok = processor.tokenizer
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        batch = collate(processor, images[i : i + batch_size], questions[i : i + batch_size], padding_side="left")
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=generation_stop_ids(processor, model))
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, top_k=0)
        gen = model.generate(**batch, **kw)
        new = gen[:, batch["input_ids"].shape[1] :]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def score_yes_no(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    ids: YesNoIds | None = None,
    batch_size: int = 64,
    histories: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> tuple[list[float], list[float]]:
    """(p_yes, p_no) per question from one forward pass each (no ``generate``), batched.

    ``histories`` (per question) puts earlier turns in context, e.g. the labeler's own
    description for the describe-then-answer stand-in.
    """
    ids = ids or yes_no_ids(processor)
    p_yes: list[float] = []
    p_no: list[float] = []
    for i in range(0, len(images), batch_size):
        hist = histories[i : i + batch_size] if histories is not None else None
        batch = collate(processor, images[i : i + batch_size], questions[i : i + batch_size], padding_side="left", histories=hist)
        logits = model(**batch).logits[:, -1, :]
        y, n = p_yes_no(logits, ids)
        p_yes += y.tolist()
        p_no += n.tolist()
    return p_yes, p_no
