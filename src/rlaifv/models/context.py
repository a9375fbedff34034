"""Prompt-length guard: a prompt longer than the model can take is a bad input, refused before any forward.

Without it a 100k-character question was run (minutes for a meaningless answer), and batched
with good prompts it ran the process out of memory on every rerun. The limit is
``max_prompt_tokens`` when set (> 0), else the model's context (``max_position_embeddings`` of
its text config) minus the tokens the stage still generates after the prompt:

* ``sample`` / best-of-N: context - ``max_new_tokens`` (every candidate must fit whole);
* ``conquer`` (direct): the context (one forward, the verdict is read at the prompt's end);
* training: ``max_length`` (prompt + answer), default the context (``training/data.py``).

A prompt's length is the number of tokens the model sees: templated text **and** image tokens.
Several questions about one image are counted with one full encoding: the image adds the
same number of tokens to every question (``prompt_lengths``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

from PIL import Image

from ..config import ConfigError
from .chat import encode_prompt, prompt_text


class PromptTooLongError(ValueError):
    """A prompt exceeds the token limit; the message names the record (a bad input, not a config error)."""


def model_context(model) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its text config), if it states one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


_WARNED: set[tuple[str, int, int]] = set()


def prompt_token_limit(model, max_prompt_tokens: int, budget: int, what: str) -> tuple[int | None, str]:
    """(limit, how it was set) for prompts of stage ``what``; limit None: the model states no context.

    ``max_prompt_tokens`` > 0 wins; else context - ``budget`` (tokens generated after the
    prompt). A budget that fills the whole context is warned about once and the prompt is held
    to the context alone (such a run may still generate past the context).
    """
    if not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 0:
        raise ConfigError(f"{what}.max_prompt_tokens must be an integer >= 0 (0: the model's context), got {max_prompt_tokens!r}")
    if max_prompt_tokens > 0:
        return max_prompt_tokens, f"{what}.max_prompt_tokens {max_prompt_tokens}"
    context = model_context(model)
    if context is None:
        key = (what, -1, budget)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"{what}: the model states no context length (max_position_embeddings); prompt lengths are not "
                          f"checked unless {what}.max_prompt_tokens is set", stacklevel=3)
        return None, "no limit"
    if budget <= 0:
        return context, f"the model's context of {context} tokens"
    if context - budget < 1:
        key = (what, context, budget)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"{what}: a generation budget of {budget} tokens fills the model's whole context of {context} "
                          f"tokens; prompts are held to the context alone and answers may run past it (lower max_new_tokens, "
                          f"or set {what}.max_prompt_tokens)", stacklevel=3)
        return context, f"the model's context of {context} tokens"
    return context - budget, f"the model's context of {context} tokens minus {budget} tokens to generate"


def _text_lengths(processor, questions: Sequence[str], history: Sequence[tuple[str, str]]) -> list[int]:
    """Token counts of the templated prompts without image expansion (tokenizer only: cheap)."""
    tok = processor.tokenizer
    out = []
    for q in questions:
        text = prompt_text(processor, q, history)
        bos = getattr(tok, "bos_token", None)
        kw = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        out.append(len(tok(text, **kw)["input_ids"]))
    return out


def prompt_lengths(processor, image: Image.Image, questions: Sequence[str], history: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Tokens the model sees for each question about ``image`` (image tokens included).

    The longest question is encoded in full with the image; the others add the same image
    expansion to their text-only count (exact: the image part does not depend on the question).
    """
    if not questions:
        return []
    text = _text_lengths(processor, questions, history)
    longest = max(range(len(questions)), key=text.__getitem__)
    full = encode_prompt(processor, image, questions[longest], history)["input_ids"].shape[1]
    extra = full - text[longest]
    return [n + extra for n in text]


def check_prompt_lengths(processor, labels: Sequence[str], images: Sequence[Image.Image], questions: Sequence[str],
                         limit: int | None, why: str, history: Sequence[tuple[str, str]] = ()) -> None:
    """PromptTooLongError naming the first record (``labels[i]``) whose prompt exceeds ``limit``.

    One image per question; a question whose text alone exceeds the limit is refused without
    processing its image.
    """
    if limit is None:
        return
    for label, image, question in zip(labels, images, questions):
        (text,) = _text_lengths(processor, [question], history)
        n = text if text > limit else prompt_lengths(processor, image, [question], history)[0]
        if n > limit:
            raise PromptTooLongError(f"{label}: the prompt is {'at least ' if text > limit else ''}{n} tokens (image + "
                                     f"question, {len(question)} characters), longer than {limit} ({why}); refused before "
                                     "any forward")


def check_question_lengths(processor, image: Image.Image, labels: Sequence[str], questions: Sequence[str], limit: int | None,
                           why: str, history: Sequence[tuple[str, str]] = ()) -> None:
    """Like :func:`check_prompt_lengths` for several questions about one image (one image encoding)."""
    if limit is None or not questions:
        return
    for label, question, n in zip(labels, questions, prompt_lengths(processor, image, questions, history)):
        if n > limit:
            raise PromptTooLongError(f"{label}: the prompt is {n} tokens (image + question, {len(question)} characters), "
                                     f"longer than {limit} ({why}); refused before any forward")
