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
  used when it says what the claim says: no content word that is not in the claim, every
  content word of the claim, the same negation (:mod:`.llm_checks`). Otherwise the rules
  question is used and the fallback counted with its reason (see :func:`ask_results`); the
  stage keeps every raw reply and fails when fallbacks dominate (:mod:`.llm_stage`).
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
from .llm_checks import content_words, support
from .llm_stage import check_rate

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
class AskLLMConfig(LLMConfig):
    """The ask LLM: as :class:`LLMConfig`, with a question-sized budget. A subclass, not a
    default_factory, so that a YAML ``llm:`` section (or a CLI loading flag) that builds the
    section from its fields keeps these defaults."""

    max_new_tokens: int = field(default=64, metadata={"help": "generation budget per conversation"})


@dataclass
class AskConfig:
    """Settings of ``rlaifv ask``."""

    backend: str = field(default="rules", metadata={"help": "rules (deterministic) | llm"})
    suffix: str = field(default=DEFAULT_SUFFIX, metadata={"help": "appended after the question ('' = none)"})
    llm: AskLLMConfig = field(default_factory=AskLLMConfig, metadata={"help": "local chat LLM (backend llm)"})
    endpoint: EndpointConfig = field(default_factory=EndpointConfig, metadata={"help": "OpenAI-compatible server; overrides llm.model_path"})
    examples: bool = field(default=True, metadata={"help": "llm: show worked examples in the prompt (small instruct models need them; "
                                                             "turn off for a fine-tuned rewrite model)"})
    min_support: float = field(default=1.0, metadata={"help": "llm: share of the question's content words that must be in the claim"})
    min_coverage: float = field(default=1.0, metadata={"help": "llm: share of the claim's content words the question must keep"})
    max_fallback_rate: float = field(default=0.5, metadata={"help": "llm: the stage fails when more than this share of claims "
                                                                    "fall back to the rules question"})

    def __post_init__(self) -> None:
        check_choice("ask.backend", self.backend, ("rules", "llm"))
        for name in ("min_support", "min_coverage", "max_fallback_rate"):
            check_rate(f"ask.{name}", getattr(self, name))


@dataclass
class AskResult:
    """One claim's question; for the LLM backend also the raw reply and why it was not used."""

    question: PolarQuestion
    raw: str | None = None
    fallback: str | None = None  # "no question" | "adds: ..." | "drops: ..." (the rules question was used)


def ask(claims: Sequence[Claim], cfg: AskConfig | None = None, lm: ChatLM | None = None) -> list[PolarQuestion]:
    """One polar question per claim, in order (a pure function of the claims, cfg and LLM)."""
    return [r.question for r in ask_results(claims, cfg, lm)]


def ask_with_raw(claims: Sequence[Claim], cfg: AskConfig | None = None, lm: ChatLM | None = None) -> list[tuple[PolarQuestion, str | None]]:
    """(question, raw LLM reply) per claim; raw is None for the rules backend."""
    return [(r.question, r.raw) for r in ask_results(claims, cfg, lm)]


def ask_results(claims: Sequence[Claim], cfg: AskConfig | None = None, lm: ChatLM | None = None) -> list[AskResult]:
    """Question, raw reply and fallback reason per claim (raw and reason None for rules).

    With the LLM backend, a reply without a question, or whose question adds, drops or negates
    content (:func:`check_question`), falls back to the rules question, with the reason.
    """
    cfg = cfg or AskConfig()
    texts = [_claim_text(c) for c in claims]
    rules = [polar_question(t) for t in texts]
    if cfg.backend == "rules":
        out = [(q, None, None) for q in rules]
    elif cfg.backend == "llm":
        lm = lm or build_chat_lm(cfg.llm, cfg.endpoint)
        msgs = [ask_messages(t, cfg.examples) for t in texts]
        replies = lm.chat(msgs, temperature=cfg.llm.temperature, top_p=cfg.llm.top_p, max_new_tokens=cfg.llm.max_new_tokens) if msgs else []
        out = []
        for text, rule_q, raw in zip(texts, rules, replies):
            q = parse_question(raw)
            reason = "no question" if q is None else check_question(q, text, cfg.min_support, cfg.min_coverage)
            out.append((rule_q if reason else q, raw, reason))
    else:
        raise ValueError(f"ask: unknown backend {cfg.backend!r}; expected 'rules' or 'llm'")
    return [AskResult(PolarQuestion(claim_id=c.id, claim=c.text, question=with_suffix(q, cfg.suffix)), raw, reason)
            for c, (q, raw, reason) in zip(claims, out)]


def check_question(question: str, claim: str, min_support: float = 1.0, min_coverage: float = 1.0) -> str | None:
    """Why an LLM question does not ask what the claim states, or None when it does.

    "adds: boy" (a content word not in the claim), "drops: sit" (a claim word left out); a
    negation added or dropped shows as "<not>".
    """
    q_words, c_words = content_words(question), content_words(claim)
    share, added = support(question, c_words)
    if share < min_support:
        return f"adds: {', '.join(added)}"
    share, missing = support(claim, q_words)
    if share < min_coverage:
        return f"drops: {', '.join(missing)}"
    return None


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


#: Worked examples shown before the claim (``examples: true``): (statement, question).
ASK_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("The dog is brown.", "Is the dog brown?"),
    ("A man is holding an umbrella.", "Is a man holding an umbrella?"),
    ("There are two cars on the road.", "Are there two cars on the road?"),
    ("The girl does not wear a hat.", "Does the girl not wear a hat?"),
)


def ask_messages(claim: str, examples: bool = False) -> Messages:
    """The rewrite prompt for one claim; with ``examples`` the :data:`ASK_EXAMPLES` come first as
    earlier turns (SmolLM2-135M-Instruct echoed the bare instruction's statement: 18 of 18)."""
    msgs: Messages = [{"role": "system", "content": ASK_SYSTEM}]
    for statement, question in ASK_EXAMPLES if examples else ():
        msgs += [{"role": "user", "content": f"{ASK_INSTRUCTION}\nStatement: {statement}"}, {"role": "assistant", "content": question}]
    return msgs + [{"role": "user", "content": f"{ASK_INSTRUCTION}\nStatement: {claim}"}]


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
