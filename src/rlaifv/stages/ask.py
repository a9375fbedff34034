"""Ask: turn each claim into the polar (yes/no) question the labeler answers.

RLAIF-V (Yu et al. 2025, Sec. 3.1) asks the labeler about one claim at a time: a fine-tuned
Llama-3-8B ("changeq") rewrites the claim as a general question without changing its tense or
adding content, keeping any negation, and "Please answer yes or no." is appended. The
labeler's p(yes) vs p(no) on that question then decides the claim (``conquer``).

Two backends:

* ``rules`` (default, deterministic): subject-auxiliary inversion ("The cat is black." ->
  "Is the cat black?"), do-support with the verb in its base form ("The man had a hat." ->
  "Did the man have a hat?"), negation kept in place ("There is no dog." -> "Is there no dog?").
  A claim the rules cannot parse becomes "Is it true that <claim>?", never an empty question.
  On sandbox claims it reproduces ``rlaifv.sandbox.tasks.claim_question`` exactly.
* ``llm``: a chat LLM (:mod:`.llm`) rewrites the claim; the first question in its reply is
  used, and the rules question when the reply holds none (see :func:`ask_with_raw`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ..config import check_choice
from ..records import Claim, PolarQuestion
from .english import (
    CONTRACTIONS, DETERMINERS, HAVE_FORMS, SUBJECT_PRONOUNS, bare, find_finite_verb, is_participle,
)
from .llm import ChatLM, EndpointConfig, LLMConfig, Messages, build_chat_lm, strip_list_marker

#: The reference's suffix after every polar question.
DEFAULT_SUFFIX = "Please answer yes or no."
FALLBACK_PREFIX = "Is it true that"
#: Words that may stand between "has" and a participle ("has not yet eaten").
_HAVE_ADVERBS = frozenset("not never already just also yet recently".split())
_DO_OF = {"pres3": "does", "past": "did", "base": "do", "has": "does", "have": "do", "had": "did"}
#: First words lower-cased when they move after the fronted verb ("The cat" -> "the cat");
#: other capitalised words may be names ("John is tall." -> "Is John tall?") and are kept.
_LOWER_FIRST = DETERMINERS | (SUBJECT_PRONOUNS - {"i"}) | {"there", "here", "none", "nothing", "someone", "something", "everyone"}


@dataclass
class AskConfig:
    """Settings of ``rlaifv ask``."""

    backend: str = field(default="rules", metadata={"help": "rules (deterministic) | llm"})
    suffix: str = field(default=DEFAULT_SUFFIX, metadata={"help": "appended after the question ('' = none)"})
    llm: LLMConfig = field(default_factory=lambda: LLMConfig(max_new_tokens=64), metadata={"help": "local chat LLM (backend llm)"})
    endpoint: EndpointConfig = field(default_factory=EndpointConfig, metadata={"help": "OpenAI-compatible server; overrides llm.model_path"})

    def __post_init__(self) -> None:
        check_choice("ask.backend", self.backend, ("rules", "llm"))


def ask(claims: Sequence[Claim], cfg: AskConfig | None = None, lm: ChatLM | None = None) -> list[PolarQuestion]:
    """One polar question per claim, in order (a pure function of the claims, cfg and LLM)."""
    return [q for q, _ in ask_with_raw(claims, cfg, lm)]


def ask_with_raw(claims: Sequence[Claim], cfg: AskConfig | None = None, lm: ChatLM | None = None) -> list[tuple[PolarQuestion, str | None]]:
    """(question, raw LLM reply) per claim; raw is None for the rules backend.

    With the LLM backend, a reply without a question falls back to the rules question; the
    raw reply is returned so that callers can see (and count) those fallbacks.
    """
    cfg = cfg or AskConfig()
    texts = [_claim_text(c) for c in claims]
    rules = [polar_question(t) for t in texts]
    if cfg.backend == "rules":
        raws: list[str | None] = [None] * len(texts)
        questions = rules
    elif cfg.backend == "llm":
        lm = lm or build_chat_lm(cfg.llm, cfg.endpoint)
        msgs = [ask_messages(t) for t in texts]
        replies = lm.chat(msgs, temperature=cfg.llm.temperature, top_p=cfg.llm.top_p, max_new_tokens=cfg.llm.max_new_tokens) if msgs else []
        raws = list(replies)
        questions = [parse_question(r) or q for r, q in zip(replies, rules)]
    else:
        raise ValueError(f"ask: unknown backend {cfg.backend!r}; expected 'rules' or 'llm'")
    return [
        (PolarQuestion(claim_id=c.id, claim=c.text, question=with_suffix(q, cfg.suffix)), raw)
        for c, q, raw in zip(claims, questions, raws)
    ]


def _claim_text(claim: Claim) -> str:
    if not isinstance(claim.text, str) or not claim.text.strip():
        raise ValueError(f"claim {claim.id!r}: empty text, cannot make a question")
    return claim.text.strip()


def with_suffix(question: str, suffix: str) -> str:
    """"Is there a dog?" + "Please answer yes or no." (no suffix when it is empty)."""
    return f"{question} {suffix}" if suffix else question


# ---------------------------------------------------------------- rules backend


def polar_question(claim: str) -> str:
    """The yes/no question of a declarative claim, keeping tense and negation.

    "There are two dogs." -> "Are there two dogs?"; "A woman holds an umbrella." -> "Does a
    woman hold an umbrella?"; "Two people walked." -> "Did two people walk?"; "The sign does
    not say stop." -> "Does the sign not say stop?". A claim already ending in "?" is kept.
    """
    text = claim.strip()
    if text.endswith("?"):
        return text[:1].upper() + text[1:]
    body = re.sub(r"[\s.!;,:]+([\"'”’)]*)$", r"\1", text)
    tokens = expand_contractions(body.split())
    verb = find_finite_verb(tokens)
    if verb is None:
        return fallback_question(body)
    i, kind, base = verb
    subject, rest = _lower_first(tokens[:i]), tokens[i + 1 :]
    if kind == "aux" and base in HAVE_FORMS and not _participle_follows(rest):
        words = [_DO_OF[base]] + subject + ["have"] + rest  # "has a hat": main verb "have"
    elif kind == "aux":
        words = [base] + subject + rest
    else:
        words = [_DO_OF[kind]] + subject + [base] + rest
    q = " ".join(words)
    return q[:1].upper() + q[1:] + "?"


def fallback_question(body: str) -> str:
    """"Is it true that <claim without final period>?" for claims the rules cannot parse."""
    words = body.split()
    words = _lower_first(words) if not (words and words[0].lower().endswith("ing")) else [words[0].lower()] + words[1:]
    return f"{FALLBACK_PREFIX} {' '.join(words)}?" if words else f"{FALLBACK_PREFIX} this?"


def expand_contractions(tokens: list[str]) -> list[str]:
    """"doesn't" -> "does not", "can't"/"cannot" -> "can not": the "not" stays in place."""
    out: list[str] = []
    for t in tokens:
        w = bare(t).replace("’", "'")
        if w in CONTRACTIONS:
            aux = CONTRACTIONS[w]
            out += [aux[:1].upper() + aux[1:] if t[:1].isupper() else aux, "not"]
        else:
            out.append(t)
    return out


def _participle_follows(rest: list[str]) -> bool:
    for t in rest:
        if bare(t) not in _HAVE_ADVERBS:
            return is_participle(t)
    return False


def _lower_first(words: list[str]) -> list[str]:
    if words and bare(words[0]) in _LOWER_FIRST:
        return [words[0][:1].lower() + words[0][1:]] + words[1:]
    return list(words)


# ---------------------------------------------------------------- llm backend

ASK_SYSTEM = "You rewrite statements as yes/no questions."
ASK_INSTRUCTION = (
    "Rewrite the statement as a general yes/no question. Keep its tense and any negation; "
    "do not add or remove content. Reply with the question only."
)


def ask_messages(claim: str) -> Messages:
    """The rewrite prompt for one claim."""
    return [{"role": "system", "content": ASK_SYSTEM}, {"role": "user", "content": f"{ASK_INSTRUCTION}\nStatement: {claim}"}]


def parse_question(raw: str) -> str | None:
    """The first question (a sentence of 2+ words ending in "?") in an LLM reply, or None.

    List markers, markdown, quotes and lead-ins ("Question:", "Sure!") are skipped; anything
    after the "?" (e.g. an echoed "Please answer yes or no.") is dropped.
    """
    for line in raw.splitlines():
        line, _ = strip_list_marker(re.sub(r"\*\*|__|`", "", line))
        for piece in re.split(r"(?<=[.!?:])\s+", line.strip()):
            piece = piece.strip(" \t\"'“”‘’")
            if piece.endswith("?") and len(piece.split()) >= 2 and re.search(r"[A-Za-z]", piece):
                return piece[:1].upper() + piece[1:]
    return None
