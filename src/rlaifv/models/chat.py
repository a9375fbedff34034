"""Turn (image, question[, answer]) into model inputs for any HF VLM processor.

The chat template always comes from the processor, and so does the answer boundary
(``models/template.py``): training batches put the answer, tokenised as the template places
it, plus the template's end-of-turn token (``<|im_end|>``, ``</s>``, ``<end_of_turn>``, ...)
after the templated prompt and supervise only those tokens. A processor without a chat
template (PaliGemma) takes the question itself as its prompt; prompts are
encoded one example at a time so that every architecture's image-token expansion is honoured,
then padded together. Extra image tensors (``pixel_values``, ``pixel_attention_mask``,
``image_grid_thw``, ...) are concatenated along the batch dimension; Qwen2-VL's
``mm_token_type_ids`` (which tokens are image tokens, for its 3-D rotary positions) is padded
like ``input_ids``, with 0 (text) for padding and answer tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from .template import TemplateError, answer_format

IGNORE_INDEX = -100
_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "cross_attention_mask")


def user_message(question: str) -> list[dict[str, Any]]:
    """One user turn with an image part followed by a text part (TRL's vision format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def conversation(question: str, history: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Messages for ``question`` after earlier (question, answer) turns; the image is in turn one."""
    if not history:
        return user_message(question)
    msgs = user_message(history[0][0]) + [_assistant(history[0][1])]
    for q, a in history[1:]:
        msgs += [_user_text(q), _assistant(a)]
    return msgs + [_user_text(question)]


def _user_text(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def prompt_text(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The templated prompt, ending where the assistant's answer starts.

    That is the template's generation prompt plus any non-space text the template puts before
    an answer (``AnswerFormat.prefill``). Without a chat template the question is the prompt.
    """
    fmt = answer_format(processor)
    if not fmt.has_template:
        if history:
            raise TemplateError(f"{type(processor).__name__} has no chat template, so earlier turns cannot be rendered")
        return question
    return processor.apply_chat_template(conversation(question, history), add_generation_prompt=True, tokenize=False) + fmt.prefill


def _images_arg(processor, image: Image.Image):
    # Idefics3/SmolVLM take a nested list (images per sample); others take a flat list.
    name = type(processor).__name__
    return [[image]] if ("Idefics" in name or "SmolVLM" in name) else [image]


def encode_prompt(processor, image: Image.Image, question: str, history: Sequence[tuple[str, str]] = ()) -> dict[str, torch.Tensor]:
    """Encode one prompt (image + question, templated, after ``history``), unpadded, batch size 1."""
    text = prompt_text(processor, question, history)
    bos = getattr(processor.tokenizer, "bos_token", None)
    # a template that writes the BOS itself (Gemma 3, Llama 3) must not get a second one from the tokenizer
    kw = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    enc = dict(processor(text=[text], images=_images_arg(processor, image), return_tensors="pt", **kw))
    enc.pop("labels", None)  # PaliGemma's processor makes labels of its own; rlaifv builds them in collate
    return enc


def answer_ids(processor, answer: str) -> list[int]:
    """Token ids of the answer as the template places it, then its end-of-turn token."""
    return answer_format(processor).answer_ids(processor.tokenizer, answer)


def followup_ids(processor, question: str, answer: str, followups: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, labels) of further (question, answer) turns about the same image, after ``answer``.

    Turns are rendered with the processor's chat template; only answers + end-of-turn are supervised.
    """
    tok = processor.tokenizer
    fmt = answer_format(processor)
    end = fmt.end_text
    msgs = user_message(question) + [_assistant(answer)]
    rendered = processor.apply_chat_template(msgs, tokenize=False)
    ids: list[int] = []
    labels: list[int] = []
    for q, a in followups:
        prompt = processor.apply_chat_template(msgs + [_user_text(q)], add_generation_prompt=True, tokenize=False) + fmt.prefill
        if not end or not prompt.startswith(rendered) or not rendered.rstrip().endswith(end):
            raise TemplateError("the chat template does not render turns as a prefix ending in its end-of-turn token; "
                                "multi-turn collation needs it")
        after_end = rendered[rendered.rindex(end) + len(end) :]
        glue = tok(after_end + prompt[len(rendered) :], add_special_tokens=False)["input_ids"]
        a_ids = answer_ids(processor, a)
        ids += list(glue) + a_ids
        labels += [IGNORE_INDEX] * len(glue) + a_ids
        msgs = msgs + [_user_text(q), _assistant(a)]
        rendered = processor.apply_chat_template(msgs, tokenize=False)
    return ids, labels


def collate(
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    padding_side: str = "right",
    followups: Sequence[Sequence[tuple[str, str]]] | None = None,
    histories: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> dict[str, torch.Tensor]:
    """Batch examples; with ``answers``, add ``labels`` that supervise only the answer + end-of-turn.

    ``followups`` (with answers) adds further turns about the same image per example, all
    supervised on their answers. ``histories`` puts earlier (question, answer) turns before
    each question (unsupervised context). ``padding_side='left'`` is what generation wants.
    Per-token processor outputs (:data:`TOKEN_KEYS`) are extended over the answer tokens and
    padded like ``input_ids``; image tensors are concatenated along the batch dimension.
    """
    pad_id = processor.tokenizer.pad_token_id
    rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    per_token: dict[str, list[torch.Tensor]] = {}
    extras: dict[str, list[torch.Tensor]] = {}
    for i, (img, q) in enumerate(zip(images, questions)):
        enc = encode_prompt(processor, img, q, histories[i] if histories is not None else ())
        ids = enc.pop("input_ids")[0].tolist()
        for k in [k for k in enc if k in _TEXT_KEYS and k not in TOKEN_KEYS]:
            enc.pop(k)
        n_prompt = len(ids)
        if answers is not None:
            a = answer_ids(processor, answers[i])
            label_rows.append([IGNORE_INDEX] * len(ids) + a)
            ids = ids + a
            if followups is not None and followups[i]:
                more, more_labels = followup_ids(processor, q, answers[i], followups[i])
                ids += more
                label_rows[-1] += more_labels
        for k in [k for k in enc if k in TOKEN_KEYS]:
            per_token.setdefault(k, []).append(_extend(enc.pop(k)[0], len(ids) - n_prompt, k, processor))
        for k, v in enc.items():
            extras.setdefault(k, []).append(v)
        rows.append(ids)
    width = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.tensor([_pad(r, width, pad_id, padding_side) for r in rows]),
        "attention_mask": torch.tensor([_pad([1] * len(r), width, 0, padding_side) for r in rows]),
    }
    if answers is not None:
        batch["labels"] = torch.tensor([_pad(r, width, IGNORE_INDEX, padding_side) for r in label_rows])
    for k, vs in per_token.items():
        batch[k] = torch.stack([_pad_dim0(v, width, padding_side) for v in vs])
    for k, vs in extras.items():
        batch[k] = torch.cat(vs, dim=0)
    return batch


#: Per-token processor outputs, kept and extended over answer tokens: Qwen-VL's
#: ``mm_token_type_ids`` (image-token map for 3-D positions; answers are text, 0), Gemma 3's /
#: PaliGemma's ``token_type_ids`` (answers are text, 0, except PaliGemma's suffix, 1) and
#: Mllama's ``cross_attention_mask`` (answers attend to the image like the last prompt token).
TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids", "cross_attention_mask")
#: Processors whose answer tokens are a different token type than their prompt (prefix-LM suffix).
_SUFFIX_TOKEN_TYPE = {"PaliGemmaProcessor": 1}


def _extend(row: torch.Tensor, n: int, key: str, processor) -> torch.Tensor:
    """``row`` [S, ...] continued over ``n`` answer tokens (see :data:`TOKEN_KEYS`)."""
    if n == 0:
        return row
    if key == "cross_attention_mask":
        tail = row[-1:].expand(n, *row.shape[1:])
    else:
        value = _SUFFIX_TOKEN_TYPE.get(type(processor).__name__, 0) if key == "token_type_ids" else 0
        tail = torch.full((n, *row.shape[1:]), value, dtype=row.dtype)
    return torch.cat([row, tail])


def _pad_dim0(row: torch.Tensor, width: int, side: str) -> torch.Tensor:
    fill = torch.zeros((width - row.shape[0], *row.shape[1:]), dtype=row.dtype)
    return torch.cat([row, fill] if side == "right" else [fill, row])


def _pad(row: list[int], width: int, value: int, side: str) -> list[int]:
    fill = [value] * (width - len(row))
    return row + fill if side == "right" else fill + row
