"""Where a model's own chat template puts an assistant answer: its start, its end, its yes/no tokens.

Why: conquer reads p_yes / p_no at the labeler's *first answer token* (RLAIF-V Sec. 3.2), DPO
supervises the answer plus the end-of-turn token, sampling stops at it, and best-of-N scores
exactly those tokens. Each family writes that boundary differently, and a fixed ChatML guess
reads the wrong tokens everywhere else:

* ChatML (Qwen2-VL, LLaVA-NeXT-34B, LLaVA-OneVision): prompt ends ``<|im_start|>assistant\\n``,
  the answer follows directly ("Yes", byte-level ``Yes``) and ends with ``<|im_end|>``;
* LLaVA-1.5: prompt ends ``ASSISTANT:``, the template renders the turn as ``ASSISTANT: {text} ``,
  so the first answer token carries a leading space (SentencePiece ``▁Yes``), ended by ``</s>``;
* SmolVLM / Idefics3: ``Assistant:`` then `` Yes`` (byte-level ``ĠYes``), ``<end_of_utterance>``;
* Gemma 3 ``<start_of_turn>model\\n`` ... ``<end_of_turn>``; Mllama ... ``<|eot_id|>``;
* PaliGemma has no chat template: the prompt is the question, the answer ends with EOS.

How: :func:`answer_format` renders one probe conversation twice through the processor's own
template, once with ``add_generation_prompt=True`` (the prompt P) and once with an assistant
turn holding a sentinel (F). Text between P and the sentinel is what the template puts before
an answer: its trailing whitespace belongs to the answer's first token (``lead``), anything
else (e.g. an empty thinking block) is appended to every prompt (``prefill``). The text after
the sentinel starts with the end-of-turn marker; its first token is ``end_id`` when it is a
special token, else the tokenizer's EOS. Answers are tokenised *in context* (after the probe
prompt), so a SentencePiece tokenizer does not add its word-start "▁" where the template has
none. The yes/no ids are the first tokens of "yes"/"Yes"/"no"/"No" after the prompt, in the
template's own spacing and in both other spacings (deduplicated), so the read-out sums every
variant a model can put there. ``YesNoOverride`` replaces them for unusual models.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Any, Sequence

from .yesno import NO_WORDS, YES_WORDS, YesNoIds

PROBE_QUESTION = "Is there a cat in the image? Please answer yes or no."
_SENTINEL = "RLAIFVANSWERSENTINEL"


class TemplateError(ValueError):
    """The processor's chat template does not let rlaifv find the answer boundary."""


@dataclass(frozen=True)
class AnswerFormat:
    """How one processor's template places an assistant answer (see the module docstring)."""

    prefill: str  # appended to every generation prompt (non-space text the template puts before an answer)
    lead: str  # whitespace the template puts before the answer's first word (" " for LLaVA-1.5)
    end_text: str  # the end-of-turn marker after an answer ("<|im_end|>", "</s>", ...; "" if none)
    end_id: int  # the token that ends an answer (labels, best-of-N scoring)
    stop_ids: tuple[int, ...]  # tokens that end generation: end_id first, then EOS
    context_ids: tuple[int, ...]  # token ids of the probe prompt (+ prefill), for in-context tokenisation
    context_text: str
    has_template: bool

    def answer_ids(self, tokenizer, answer: str) -> list[int]:
        """Token ids of ``answer`` as the model writes it after the prompt, plus ``end_id``."""
        return self.answer_tokens(tokenizer, answer) + [self.end_id]

    def answer_tokens(self, tokenizer, answer: str) -> list[int]:
        """Token ids of ``lead + answer`` tokenised after the probe prompt (no end token)."""
        full = _encode(tokenizer, self.context_text + self.lead + answer)
        n = len(self.context_ids)
        if list(full[:n]) != list(self.context_ids):
            n = _common_prefix(full, self.context_ids)
            _warn_once(("merge", self.context_text[-20:]), "the answer's first token merges with the end of the generation "
                       f"prompt ({self.context_text[-20:]!r}); tokenising the answer from the first differing token")
        return list(full[n:])


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


_WARNED: set[Any] = set()


def _warn_once(key: Any, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def tokenizer_of(processor):
    """The text tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def has_chat_template(processor) -> bool:
    """True when the processor (or its tokenizer) carries a chat template."""
    return bool(getattr(processor, "chat_template", None) or getattr(tokenizer_of(processor), "chat_template", None))


def _render(processor, messages: list[dict], generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _probe_messages(processor, question: str) -> list[dict[str, Any]]:
    """A user turn with an image part (a VLM processor) or plain text (a text tokenizer)."""
    if processor is tokenizer_of(processor):
        return [{"role": "user", "content": question}]
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _assistant_turn(processor, text: str) -> dict[str, Any]:
    if processor is tokenizer_of(processor):
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _split_lead(between: str) -> tuple[str, str]:
    """(prefill, lead): the non-space part is prefilled, the trailing whitespace leads the answer."""
    stripped = between.rstrip()
    return stripped, between[len(stripped) :]


def _end_token(tokenizer, tail: str) -> tuple[str, int]:
    """(end text, end id) from the text a template renders after an answer."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = _encode(tokenizer, tail.lstrip(" "))
    if ids and ids[0] in special:
        return tokenizer.convert_ids_to_tokens(ids[0]), ids[0]
    if tokenizer.eos_token_id is None:
        raise TemplateError("the template ends an answer with no special token and the tokenizer has no EOS token; "
                            "cannot tell where an answer ends")
    return "", tokenizer.eos_token_id


def _template_parts(processor) -> tuple[str, str, str, str]:
    """(prompt, prefill, lead, tail) of the probe conversation under the processor's template."""
    msgs = _probe_messages(processor, PROBE_QUESTION)
    prompt = _render(processor, msgs, True)
    full = _render(processor, msgs + [_assistant_turn(processor, _SENTINEL)], False)
    if _SENTINEL not in full:
        raise TemplateError("the chat template does not render the assistant's text; cannot place answers")
    at = full.index(_SENTINEL)
    before, tail = full[:at], full[at + len(_SENTINEL) :]
    if not before.startswith(prompt):
        _warn_once(("continue", prompt[-30:]), "the chat template renders an assistant turn that does not continue its "
                   f"generation prompt (prompt ends {prompt[-30:]!r}, turn {before[-30:]!r}); answers are placed right "
                   "after the generation prompt")
        return prompt, "", "", tail
    prefill, lead = _split_lead(before[len(prompt) :])
    return prompt, prefill, lead, tail


def compute_answer_format(processor, extra_stop_ids: Sequence[int] = ()) -> AnswerFormat:
    """Derive the :class:`AnswerFormat` of ``processor`` (a VLM processor or a tokenizer)."""
    tok = tokenizer_of(processor)
    if not has_chat_template(processor):  # prefix-prompt models (PaliGemma): question, then the answer, then EOS
        if tok.eos_token_id is None:
            raise TemplateError("no chat template and no EOS token: cannot tell where an answer ends")
        context = PROBE_QUESTION + "\n"
        return AnswerFormat("", "", tok.eos_token or "", tok.eos_token_id, _dedupe([tok.eos_token_id, *extra_stop_ids]),
                            tuple(_encode(tok, context)), context, False)
    prompt, prefill, lead, tail = _template_parts(processor)
    end_text, end_id = _end_token(tok, tail)
    stops = _dedupe([end_id, tok.eos_token_id, *extra_stop_ids])
    context = prompt + prefill
    return AnswerFormat(prefill, lead, end_text, end_id, stops, tuple(_encode(tok, context)), context, True)


def _dedupe(ids: Sequence[int | None]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


_CACHE: dict[tuple[int, int, str], tuple[weakref.ref, AnswerFormat]] = {}


def answer_format(processor) -> AnswerFormat:
    """The processor's :class:`AnswerFormat`, computed once per (processor, tokenizer, template).

    The cache holds a weak reference to the processor and checks it on every hit, so a new
    processor that happens to reuse a dead one's ``id`` never gets its format.
    """
    tok = tokenizer_of(processor)
    key = (id(processor), id(tok), str(getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is processor:
        return hit[1]
    fmt = compute_answer_format(processor)
    _CACHE[key] = (weakref.ref(processor), fmt)
    return fmt


def generation_stop_ids(processor, model=None) -> list[int]:
    """Token ids that end generation: the template's end-of-turn, EOS, and the model's own EOS ids."""
    ids = list(answer_format(processor).stop_ids)
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [gen] if isinstance(gen, int) else list(gen or [])
    return list(_dedupe(ids))


# --------------------------------------------------------------------------- yes / no


def _first_token(fmt: AnswerFormat, tok, text: str) -> tuple[int, int]:
    """(first token id of ``text`` after the prompt, number of tokens ``text`` takes there)."""
    new = replace(fmt, lead="").answer_tokens(tok, text)
    if not new:
        raise TemplateError(f"the tokenizer adds no token for {text!r} after the generation prompt")
    return new[0], len(new)


def template_yes_no_ids(processor) -> YesNoIds:
    """yes/Yes/no/No first-answer token ids as the template places them, plus the other spacings.

    The template's own spacing (``lead + word``) always counts, by its first token (a warning
    says when a word takes several tokens there); the other spacings ("" and " ") count only
    where the word is a single token, so a bare "▁" or "Ġ" is never read as yes or no.
    """
    fmt = answer_format(processor)
    tok = tokenizer_of(processor)
    found: dict[str, dict[int, str]] = {"yes": {}, "no": {}}
    for lead in dict.fromkeys([fmt.lead, "", " "]):
        for kind, words in (("yes", YES_WORDS), ("no", NO_WORDS)):
            for w in words:
                tid, n = _first_token(fmt, tok, lead + w)
                if lead == fmt.lead and n > 1:
                    _warn_once(("multi", lead + w, id(tok)), f"{(lead + w)!r} is {n} tokens after the generation prompt; "
                               f"reading its first token {tok.convert_ids_to_tokens(tid)!r}")
                if lead == fmt.lead or n == 1:
                    found[kind].setdefault(tid, lead + w)
    shared = set(found["yes"]) & set(found["no"])
    if shared:
        raise TemplateError(f"yes and no share first-answer token(s) {tok.convert_ids_to_tokens(sorted(shared))}; "
                            "set conquer.yes_tokens / conquer.no_tokens")
    return YesNoIds(tuple(found["yes"]), tuple(found["no"]))


def override_yes_no_ids(processor, yes_tokens: Sequence[str | int], no_tokens: Sequence[str | int]) -> YesNoIds:
    """Explicit yes / no first-answer tokens (token strings as in the vocabulary, or ids)."""
    tok = tokenizer_of(processor)

    def ids(items: Sequence[str | int], what: str) -> tuple[int, ...]:
        out = []
        for t in items:
            tid = t if isinstance(t, int) else tok.convert_tokens_to_ids(t)
            if tid is None or (isinstance(t, str) and tid == tok.unk_token_id) or not 0 <= int(tid) < len(tok):
                raise TemplateError(f"conquer.{what}_tokens: {t!r} is not a token of this tokenizer")
            out.append(int(tid))
        if not out:
            raise TemplateError(f"conquer.{what}_tokens is empty")
        return tuple(dict.fromkeys(out))

    y, n = ids(yes_tokens, "yes"), ids(no_tokens, "no")
    if set(y) & set(n):
        raise TemplateError(f"conquer.yes_tokens and no_tokens share {sorted(set(y) & set(n))}")
    return YesNoIds(y, n)
