"""Divide: split each candidate answer into atomic, self-contained claims.

RLAIF-V (Yu et al. 2025, Sec. 3.1, "divide-and-conquer") scores a response by the claims it
makes, so the response is first rewritten as a list of atomic facts without opinions. The
reference code samples a fine-tuned Llama-3-8B "split" model (temperature 0.2, top_p 0.9,
256 new tokens, question + answer truncated to 300 words) and keeps its bullet lines.

Two backends:

* ``rules`` (default, deterministic): sentence splitting, conservative coordination splitting,
  simple pronoun resolution, opinion filtering and de-duplication. On sandbox descriptions
  every sentence is one claim, unchanged.
* ``llm``: any chat LLM (:mod:`.llm`: a local HF model or an OpenAI-compatible server) lists
  the facts as "- claim" lines, parsed by :func:`parse_claim_lines` and checked against the
  answer (:func:`_checked`): claims with words the answer does not contain are dropped, and a
  reply that leaves no claim, has fewer claims than the rules find, or misses much of the
  answer falls back to the rules claims (``fallback: rules``) or to none (``drop``). Raw reply, drops and fallback reason are
  returned; the stage keeps them in ``llm_raw.jsonl`` and counts them (:mod:`.llm_stage`).

A response with no claims gets an empty list; later stages never pair it (reference Sec. 1.2),
and the divide stage lists such answers in its summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ..config import ConfigError, check_choice
from ..records import Candidate, Claim
from .english import (
    AUXILIARIES, BE_FORMS, CONTRACTIONS, DETERMINERS, PLURAL_DETERMINERS, PREPOSITIONS, RELATIVES,
    SINGULAR_DETERMINERS, SUBJECT_PRONOUNS, VERB_FORMS, bare, find_finite_verb, is_plural_noun,
)
from .llm import ChatLM, EndpointConfig, LLMConfig, Messages, build_chat_lm, strip_list_marker
from .llm_checks import content_words, coverage, support
from .llm_stage import check_rate

#: A sentence containing one of these (whole words, case-insensitive) is an opinion, a
#: hedge about the scene's feel or a summary, not a checkable fact, and is dropped.
OPINION_PHRASES: tuple[str, ...] = (
    "i think", "i believe", "i feel", "i guess", "i would say", "i love", "i like", "in my opinion",
    "in my view", "it seems", "seems", "seem", "seemingly", "overall", "in summary", "in conclusion",
    "to sum up", "all in all", "beautiful", "lovely", "gorgeous", "stunning", "amazing", "wonderful",
    "breathtaking", "magnificent", "awesome", "fantastic", "adorable", "cute", "charming", "delightful",
    "pleasant", "nice", "picturesque", "serene", "tranquil", "cozy", "inviting", "impressive",
    "interesting", "atmosphere", "sense of", "evokes", "vibe", "aesthetic",
)
_OPINION_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in OPINION_PHRASES) + r")\b", re.IGNORECASE)
#: An exclamation opening with one of these expresses a feeling ("Wow, what a dog!").
INTERJECTIONS = ("wow", "oh", "ah", "aw", "aww", "what a", "what an", "how", "look at")
#: Leading discourse markers removed from a claim ("Additionally, there is a cat." -> "There is a cat.").
DISCOURSE_PREFIXES = (
    "additionally", "also", "furthermore", "moreover", "in addition", "besides", "in the image",
    "in this image", "in the picture", "in this picture", "in the photo", "in this photo",
)
_DISCOURSE_RE = re.compile(r"^(?:" + "|".join(DISCOURSE_PREFIXES) + r"),\s+", re.IGNORECASE)
#: Tokens ending in "." that do not end a sentence ("e.g.", "Mr.", "approx.").
ABBREVIATIONS = frozenset("e.g i.e mr mrs ms dr prof st jr sr vs approx fig inc ltd co mt u.s a.m p.m cf al".split())
#: After "It is ...", these mean "it" is expletive ("It is raining"), not a pronoun.
EXPLETIVE_WORDS = frozenset(
    "raining snowing sunny cloudy rainy foggy windy dark night daytime day evening morning afternoon "
    "winter summer autumn spring unclear possible likely".split()
)
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")


@dataclass
class DivideConfig:
    """Settings of ``rlaifv divide`` (LLM defaults follow the reference split model)."""

    backend: str = field(default="rules", metadata={"help": "rules (deterministic) | llm"})
    max_words: int = field(default=300, metadata={"help": "question + answer truncated to this many words"})
    max_claim_words: int = field(default=50, metadata={"help": "llm: drop parsed lines longer than this"})
    llm: LLMConfig = field(default_factory=LLMConfig, metadata={"help": "local chat LLM (backend llm)"})
    endpoint: EndpointConfig = field(default_factory=EndpointConfig, metadata={"help": "OpenAI-compatible server; overrides llm.model_path"})
    examples: bool = field(default=True, metadata={"help": "llm: show two worked examples in the prompt (small instruct models need them; "
                                                             "turn off for a fine-tuned split model)"})
    min_support: float = field(default=1.0, metadata={"help": "llm: keep a claim only if this share of its content words is in the "
                                                              "answer or question (else dropped and counted as unsupported)"})
    min_coverage: float = field(default=0.6, metadata={"help": "llm: the kept claims must mention this share of the content words "
                                                               "of the answer's factual sentences, else the division is incomplete"})
    min_claims_vs_rules: float = field(default=1.0, metadata={"help": "llm: a division with fewer claims than this times the rules "
                                                                      "claims is collapsed (it would win pairs by having less to reject)"})
    fallback: str = field(default="rules", metadata={"help": "llm: an answer whose reply gives no supported claim, or a collapsed or "
                                                             "incomplete division, gets the rules claims (rules) or none, so it never pairs (drop)"})
    max_fallback_rate: float = field(default=0.5, metadata={"help": "llm: the stage fails when more than this share of answers fall back"})

    def __post_init__(self) -> None:
        check_choice("divide.backend", self.backend, ("rules", "llm"))
        check_choice("divide.fallback", self.fallback, ("rules", "drop"))
        for name in ("min_support", "min_coverage", "max_fallback_rate"):
            check_rate(f"divide.{name}", getattr(self, name))
        if self.min_claims_vs_rules < 0:
            raise ConfigError(f"divide.min_claims_vs_rules must be >= 0, got {self.min_claims_vs_rules}")


@dataclass
class DivideResult:
    """The claims of one candidate and, for the LLM backend, what the reply gave.

    ``raw``: the reply (None for the rules backend); ``parsed``: the claims read from it;
    ``dropped``: parsed claims not supported by the answer; ``fallback``: why the reply was not
    used as it is ("no claim: ...", "collapsed: ...", "incomplete: ..."), None when it was.
    """

    candidate_id: str
    claims: list[Claim]
    raw: str | None = None
    parsed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fallback: str | None = None


def divide(
    candidates: Sequence[Candidate], question_of: dict[str, str] | None = None, cfg: DivideConfig | None = None, lm: ChatLM | None = None
) -> list[DivideResult]:
    """Claims for each candidate, in order (a pure function of the batch, cfg and the LLM).

    ``question_of`` maps prompt_id -> question; the LLM sees it as context (the rules ignore
    it). ``lm`` reuses an already loaded backend; by default it is built from ``cfg``.
    """
    cfg = cfg or DivideConfig()
    for c in candidates:
        if not isinstance(c.text, str):
            raise ValueError(f"candidate {c.id!r}: text is {type(c.text).__name__}, not a string")
    if cfg.backend == "rules":
        return [_result(c, rule_claims(truncate_words(c.text, cfg.max_words)), None) for c in candidates]
    if cfg.backend != "llm":
        raise ValueError(f"divide: unknown backend {cfg.backend!r}; expected 'rules' or 'llm'")
    lm = lm or build_chat_lm(cfg.llm, cfg.endpoint)
    questions = [(question_of or {}).get(c.prompt_id) for c in candidates]
    todo = [i for i, c in enumerate(candidates) if c.text.strip()]
    msgs = [divide_messages(candidates[i].text, questions[i], cfg.max_words, cfg.examples) for i in todo]
    gen = cfg.llm
    replies = lm.chat(msgs, temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens) if msgs else []
    raws = [dict(zip(todo, replies)).get(i, "") for i in range(len(candidates))]
    return [_checked(c, q, raw, cfg) if c.text.strip() else _result(c, [], raw) for c, q, raw in zip(candidates, questions, raws)]


def _result(c: Candidate, texts: list[str], raw: str | None, **info) -> DivideResult:
    claims = [Claim(candidate_id=c.id, claim_index=k, text=t) for k, t in enumerate(texts)]
    return DivideResult(candidate_id=c.id, claims=claims, raw=raw, **info)


def _checked(c: Candidate, question: str | None, raw: str, cfg: DivideConfig) -> DivideResult:
    """The LLM claims of one answer, checked against it (:mod:`.llm_checks`).

    A claim whose content words are not in the answer (or the question it answers) is dropped.
    The reply falls back (to the rules claims, or to no claims with ``fallback: drop``) when no
    claim is left, when it has fewer claims than the rules find (``min_claims_vs_rules``) or when
    its claims miss too much of the answer (``min_coverage``): an answer collapsed into one claim
    must not look better than its competitors by having fewer claims to reject.
    """
    answer = truncate_words(c.text, cfg.max_words, whole_sentences=False)
    source = content_words(answer) | content_words(question or "")
    parsed = parse_claim_lines(raw, cfg.max_claim_words)
    kept = [t for t in parsed if support(t, source)[0] >= cfg.min_support]
    dropped = [t for t in parsed if t not in kept]
    rules = rule_claims(truncate_words(c.text, cfg.max_words))
    cov, missed = coverage(" ".join(rules), kept)
    reason = None
    if not kept:
        reason = f"no claim: {len(parsed)} parsed, {len(dropped)} unsupported" if parsed else "no claim: no claim parsed"
    elif len(kept) < cfg.min_claims_vs_rules * len(rules):
        reason = f"collapsed: {len(kept)} claim(s) where the rules find {len(rules)}"
    elif cov < cfg.min_coverage:
        reason = f"incomplete: claims cover {cov:.0%} of the answer (missing {', '.join(missed[:5])})"
    texts = kept if reason is None else rules if cfg.fallback == "rules" else []
    return _result(c, texts, raw, parsed=parsed, dropped=dropped, fallback=reason)


def truncate_words(text: str, max_words: int, whole_sentences: bool = True) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` (layout kept).

    With ``whole_sentences`` a sentence cut by the truncation is dropped whole, so the rules
    never emit half a claim; the LLM prompt is cut plainly, as in the reference.
    """
    words = list(re.finditer(r"\S+", text))
    if max_words <= 0 or len(words) <= max_words:
        return text
    cut = text[: words[max_words - 1].end()]
    if not whole_sentences:
        return cut
    last_end = max((m.end() for m in re.finditer(r"[.!?][\"'”’)\]]*(?=\s|$)", cut)), default=0)
    return cut[:last_end]


# ---------------------------------------------------------------- rules backend


def rule_claims(text: str) -> list[str]:
    """Atomic claims of ``text`` by rules: split, filter opinions, resolve "it"/"they", dedupe."""
    claims: list[str] = []
    seen: set[str] = set()
    antecedent: tuple[str, bool] | None = None
    for sentence in split_sentences(text):
        sentence = _DISCOURSE_RE.sub("", sentence).strip()
        if not re.search(r"[A-Za-z]", sentence) or is_subjective(sentence):
            continue
        parts: list[str] = []
        for part in split_coordination(sentence):
            part = resolve_pronoun(part, subject_of(parts[-1]) if parts else antecedent)
            parts.append(part)
        subjects = set(map(subject_of, parts))
        antecedent = subjects.pop() if len(subjects) == 1 else None
        claims += [p for p in map(_finish, parts) if _first_time(p, seen)]
    return claims


def _first_time(claim: str, seen: set[str]) -> bool:
    """True the first time a claim is seen (case, spacing and final punctuation ignored)."""
    key = re.sub(r"\s+", " ", claim.lower()).rstrip(".!")
    if key in seen:
        return False
    seen.add(key)
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: lines (list markers stripped), then ``.!?`` boundaries followed
    by a capital or digit, except after abbreviations ("e.g.", "Mr.") and single initials.
    Decimals ("3.5") never split because no space follows the point."""
    out: list[str] = []
    for line in text.splitlines():
        line, _ = strip_list_marker(line)
        start = 0
        for m in _BOUNDARY.finditer(line):
            before = line[: m.start() + 1].split()
            word = before[-1].rstrip(".").lstrip("(\"'“‘[") if before else ""
            if line[m.start()] == "." and (word.lower() in ABBREVIATIONS or re.fullmatch(r"[A-Z]", word)):
                continue
            out.append(line[start : m.end()].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def is_subjective(sentence: str) -> bool:
    """True for opinions (:data:`OPINION_PHRASES`), questions and exclamations of feeling."""
    s = sentence.strip()
    if s.endswith("?") or _OPINION_RE.search(s):
        return True
    low = s.lower()
    return s.endswith("!") and any(re.match(rf"{re.escape(w)}\b", low) for w in INTERJECTIONS)


def _finish(body: str) -> str:
    """Capitalised, ending with exactly one period ("!" becomes ".")."""
    body = re.sub(r"[\s.!;,:]+$", "", body.strip())
    return body[:1].upper() + body[1:] + "."


def split_coordination(sentence: str) -> list[str]:
    """Clause bodies (no final period) of one sentence, split only where safe:

    * two clauses joined by "and"/"but": "The cat is black and the dog is white";
    * "There is/are X and Y": "There is a red circle and a blue square" (a trailing place
      phrase of the last item goes to every item when no other item has one);
    * "X and Y are/were/have ...": "The cat and the dog are brown".

    Adjective coordination ("black and white") never splits: every item must open with a
    determiner, and a clause must have a finite verb on both sides.
    """
    tokens = re.sub(r"[\s.!]+$", "", sentence.strip()).split()
    out: list[str] = []
    for clause in _split_clauses(tokens):
        out += _split_there_list(clause) or _split_subject_list(clause) or [" ".join(clause)]
    return out


def _split_clauses(tokens: list[str]) -> list[list[str]]:
    parts: list[list[str]] = []
    start = 0
    for k in range(start + 1, len(tokens) - 1):
        if bare(tokens[k]) in ("and", "but") and k > start:
            left, right = tokens[start:k], tokens[k + 1 :]
            if find_finite_verb(left) is not None and _starts_clause(right):
                parts.append(left[:-1] + [left[-1].rstrip(",;")])
                start = k + 1
    return parts + [tokens[start:]]


def _starts_clause(tokens: list[str]) -> bool:
    """Does ``tokens`` open with a subject and its finite verb ("the dog is", "it sits")?"""
    if len(tokens) < 2:
        return False
    first = bare(tokens[0])
    if first in SUBJECT_PRONOUNS or first == "there":
        second = bare(tokens[1])
        return second in AUXILIARIES or second in CONTRACTIONS or second in VERB_FORMS or (find_finite_verb(tokens) or (0,))[0] == 1
    if first not in DETERMINERS:
        return False
    verb = find_finite_verb(tokens)
    if verb is None or verb[0] > 5:
        return False
    return not any(bare(t) in PREPOSITIONS or bare(t) == "and" or t.endswith(",") for t in tokens[: verb[0]])


def _conjuncts(tokens: list[str]) -> list[list[str]] | None:
    """Items of a list "X, Y and Z" (None if an item is empty or not a determiner phrase)."""
    items: list[list[str]] = [[]]
    for t in tokens:
        if bare(t) == "and":
            if items[-1]:
                items.append([])
            continue
        items[-1].append(t.rstrip(","))
        if t.endswith(","):
            items.append([])
    if len(items) < 2 or any(not it or bare(it[0]) not in DETERMINERS for it in items):
        return None
    return items


def _np_plural(np: list[str]) -> bool:
    det = bare(np[0])
    if det in SINGULAR_DETERMINERS:
        return False
    if det in PLURAL_DETERMINERS or (det.isdigit() and det != "1"):
        return True
    head = _np_head(np)
    return is_plural_noun(head[-1])


def _np_head(np: list[str]) -> list[str]:
    """The noun phrase up to a preposition, relative pronoun, "with" or comma."""
    out: list[str] = []
    for t in np:
        if out and (bare(t) in PREPOSITIONS or bare(t) in RELATIVES or bare(t) == "with"):
            break
        out.append(t.rstrip(","))
        if t.endswith(","):
            break
    return out


def _split_there_list(tokens: list[str]) -> list[str] | None:
    if len(tokens) < 5 or bare(tokens[0]) != "there" or bare(tokens[1]) not in BE_FORMS:
        return None
    items = _conjuncts(tokens[2:])
    if items is None:
        return None
    preps = [next((i for i in range(1, len(it)) if bare(it[i]) in PREPOSITIONS), None) for it in items]
    if preps[-1] is not None and all(p is None for p in preps[:-1]):
        place = items[-1][preps[-1] :]
        items = [it + place for it in items[:-1]] + [items[-1]]
    past = bare(tokens[1]) in ("was", "were")
    out = []
    for it in items:
        plural = _np_plural(it)
        be = ("were" if plural else "was") if past else ("are" if plural else "is")
        out.append(" ".join([tokens[0], be] + it))
    return out


_AGREE = {"are": ("is", "are"), "were": ("was", "were"), "have": ("has", "have")}


def _split_subject_list(tokens: list[str]) -> list[str] | None:
    v = next((i for i, t in enumerate(tokens) if bare(t) in AUXILIARIES or bare(t) in VERB_FORMS), None)
    if v is None or bare(tokens[v]) not in _AGREE or v + 1 >= len(tokens):
        return None
    head = tokens[1:v] if bare(tokens[0]) == "both" else tokens[:v]
    items = _conjuncts(head)
    if items is None or any(len(it) > 6 for it in items):
        return None
    rest = tokens[v + 1 :]
    return [" ".join(it + [_AGREE[bare(tokens[v])][_np_plural(it)]] + rest) for it in items]


def subject_of(claim: str) -> tuple[str, bool] | None:
    """(definite noun phrase, plural) the claim is about, when simple; else None.

    "There is a dog" -> ("the dog", False); "The two cats are asleep" -> ("the two cats", True).
    """
    toks = re.sub(r"[\s.!]+$", "", claim).split()
    if len(toks) >= 3 and bare(toks[0]) == "there" and bare(toks[1]) in BE_FORMS:
        np = _np_head(toks[2:])
        if bare(np[0]) not in DETERMINERS or bare(np[0]) == "no" or len(np) > 5:
            return None
        return _definite(np), bare(toks[1]) in ("are", "were")
    verb = find_finite_verb(toks)
    if verb is None or verb[0] > 5 or bare(toks[0]) not in DETERMINERS:
        return None
    np = toks[: verb[0]]
    if any(bare(t) in PREPOSITIONS or bare(t) == "and" or t.endswith(",") for t in np):
        return None
    word = bare(toks[verb[0]])
    plural = True if word in ("are", "were", "have") else False if word in ("is", "was", "has") or verb[1] == "pres3" else _np_plural(np)
    return _definite(np), plural


def _definite(np: list[str]) -> str:
    det = bare(np[0])
    if det in ("a", "an", "some", "any", "one", "several", "many", "few"):
        np = ["the"] + np[1:]
    elif det in PLURAL_DETERMINERS - {"these", "those", "both"} or det.isdigit():
        np = ["the"] + np
    else:
        np = [det] + np[1:]
    return " ".join(np)


_PRONOUNS = {"it": False, "he": False, "she": False, "they": True, "it's": False, "they're": True}


def resolve_pronoun(claim: str, antecedent: tuple[str, bool] | None) -> str:
    """Replace a claim-initial "It/They/He/She" by the antecedent noun phrase when the number
    agrees: ("It is brown.", ("the dog", False)) -> "The dog is brown."; "It is raining" stays."""
    toks = claim.split()
    if antecedent is None or not toks:
        return claim
    pron = toks[0].lower().replace("’", "'")
    if pron not in _PRONOUNS or _PRONOUNS[pron] != antecedent[1]:
        return claim
    if pron.startswith("it") and any(bare(t) in EXPLETIVE_WORDS for t in toks[1:5]):
        return claim
    np = antecedent[0]
    head = [np[:1].upper() + np[1:]] + ({"it's": ["is"], "they're": ["are"]}.get(pron, []))
    return " ".join(head + toks[1:])


# ---------------------------------------------------------------- llm backend

DIVIDE_SYSTEM = "You rewrite answers about an image as lists of atomic facts."
DIVIDE_INSTRUCTION = (
    'List every atomic fact stated in the answer, one per line, each line starting with "- ". '
    "Each fact is one short, self-contained sentence: name the object instead of using a pronoun. "
    "Leave out opinions and anything the answer does not state."
)
_HEADER_RE = re.compile(
    r"^(?:here (?:are|is)|sure|okay|ok|certainly|of course|below|the following|note|(?:atomic )?(?:facts?|claims?)\s*:?$"
    r"|(?:question|answer|statement)\s*:)",
    re.IGNORECASE,
)


#: Worked examples shown before the answer (``examples: true``): (question, answer, reply).
DIVIDE_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Describe the image.", "A brown dog is lying on a red sofa. It is asleep. I think it looks happy.",
     "- There is a dog.\n- The dog is brown.\n- The dog is lying on a sofa.\n- The sofa is red.\n- The dog is asleep."),
    ("What is on the table?", "There are two cups on the table, and one of them is empty.",
     "- There are two cups on the table.\n- One of the cups is empty."),
)


def divide_messages(answer: str, question: str | None, max_words: int = 300, examples: bool = False) -> Messages:
    """The split prompt; question + answer together are truncated to ``max_words`` words.

    With ``examples`` the :data:`DIVIDE_EXAMPLES` come first as earlier user/assistant turns.
    With the bare instruction SmolLM2-135M-Instruct collapsed, truncated or reworded answers
    (4 of 8 replies fell back under :func:`_checked`; 3 of 8 with the examples; README).
    """
    q_words = len(question.split()) if question else 0
    answer = truncate_words(answer, max(max_words - q_words, 1), whole_sentences=False)
    msgs: Messages = [{"role": "system", "content": DIVIDE_SYSTEM}]
    for q, a, reply in DIVIDE_EXAMPLES if examples else ():
        msgs += [{"role": "user", "content": _divide_user(a, q)}, {"role": "assistant", "content": reply}]
    return msgs + [{"role": "user", "content": _divide_user(answer, question)}]


def _divide_user(answer: str, question: str | None) -> str:
    head = f"Question: {question}\n" if question else ""
    return f"{head}Answer: {answer}\n\n{DIVIDE_INSTRUCTION}"


def parse_claim_lines(raw: str, max_words: int = 50) -> list[str]:
    """Claims in an LLM reply: the bulleted/numbered lines ("-", "*", "•", "1.", "1)").

    Headers ("Here are the facts:"), lines ending in ":" or "?", lines without letters, lines
    longer than ``max_words`` words and duplicates are dropped; markdown emphasis, quotes and
    "Fact 1:" prefixes are stripped and a final period added. When no line is bulleted, every
    sentence of every non-header line counts (a model that ignored the format).
    """
    items = [strip_list_marker(re.sub(r"\*\*|__|`|^#+\s*", "", line)) for line in raw.splitlines()]
    bulleted = any(is_bullet and _is_fact(text) for text, is_bullet in items)
    texts: list[str] = []
    for text, is_bullet in items:
        if bulleted and is_bullet:
            texts += split_sentences(text)  # "- The rocket is tall. The rocket is tall." is two (equal) claims
        elif not bulleted and not _HEADER_RE.match(text.strip()):
            texts += split_sentences(text)
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        text = re.sub(r"^(?:fact|claim)\s*\d*\s*[:.)-]\s*", "", text.strip(), flags=re.IGNORECASE)
        text = text.strip(_QUOTES) if text[:1] in _QUOTES else text
        if not _is_fact(text) or _HEADER_RE.match(text) or len(text.split()) > max_words:
            continue
        text = text if text.endswith((".", "!")) else text + "."
        if _first_time(text, seen):
            out.append(text)
    return out


_QUOTES = "\"'“”‘’"


def _is_fact(text: str) -> bool:
    t = text.strip()
    return bool(re.search(r"[A-Za-z]", t)) and not t.endswith((":", "?"))
