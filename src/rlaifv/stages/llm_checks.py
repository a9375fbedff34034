"""Word-level checks of LLM output against its source text (divide and ask with ``backend: llm``).

A small instruct LLM asked to split an answer into claims, or to turn a claim into a yes/no
question, often echoes, invents ("He is holding a helmet" -> "Is the boy holding ..."), drops
content ("sitting and looking" -> "looking") or flips a negation. Such output must not reach
the labeler: a claim that is not in the answer is judged as if the policy had said it, and a
division that covers half the answer makes that answer look better than it is.

These checks compare *content words*: lower-cased words minus function words (determiners,
prepositions, pronouns, auxiliaries) and words that only refer to the image ("image",
"shows"), with number words as digits, verbs reduced to their base form, plural/-ing/-ed
endings stripped, and every negation ("not", "no", "never", "n't", ...) as one token
:data:`NOT`. They cannot see meaning ("towers surround the rocket" vs "the rocket surrounds
towers"), only words that appear from nowhere or go missing.
"""

from __future__ import annotations

import re
from typing import Iterable

from .english import CONTRACTIONS, DETERMINERS, PREPOSITIONS, RELATIVES, SUBJECT_PRONOUNS, AUXILIARIES, VERB_FORMS

#: The token every negation becomes, so that "not" in a claim needs a negation in its source.
NOT = "<not>"
NEGATIONS = frozenset("not no never nothing none nobody neither nor without cannot".split())
NUMBERS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
#: Words that refer to the image or frame a statement, not to its content.
FRAME_WORDS = frozenset(
    "image picture photo photograph scene view shows show shown showing depicts depict depicted depicting "
    "visible seen see there here also very just really etc yes please answer statement true".split()
)
STOP_WORDS = (
    (DETERMINERS - set(NUMBERS) - {"no"}) | PREPOSITIONS | RELATIVES | SUBJECT_PRONOUNS | AUXILIARIES | FRAME_WORDS
    | frozenset("and or but of with to as from for than then so if it's its his her him them their us me my our "
                "your what being been be do done having".split())
)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word: str) -> str:
    """A crude, deterministic stem: base verb form, then -ies/-ing/-ed/-es/-s and a final -e cut.

    "sitting" / "sits" / "sat" -> "sit"; "clouds" -> "cloud"; "making" / "makes" -> "mak".
    """
    w = word.lower()
    if w in VERB_FORMS:
        w = VERB_FORMS[w][0]
    if w.endswith("ying") and len(w) == 5:  # lying, dying, tying
        w = w[:-4] + "ie"
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            w = w[: -len(suffix)] + repl
            if suffix in ("ing", "ed") and len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "aeiouls":
                w = w[:-1]  # sitting -> sitt -> sit
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def content_words(text: str) -> set[str]:
    """The content words of ``text`` (see the module docstring): stems, digits and :data:`NOT`."""
    return set(_content(text))


def _content(text: str) -> dict[str, str]:
    """content word -> the first word of ``text`` it came from ("sitting" for "sit")."""
    out: dict[str, str] = {}
    for tok in _TOKEN.findall(text.lower().replace("’", "'")):
        if tok in CONTRACTIONS or tok.endswith("n't"):
            out.setdefault(NOT, tok)
            continue
        word = tok[:-2] if tok.endswith("'s") else tok
        if word in NEGATIONS:
            out.setdefault(NOT, word)
        elif word in NUMBERS:
            out.setdefault(NUMBERS[word], word)
        elif word not in STOP_WORDS and (len(word) > 1 or word.isdigit()):
            out.setdefault(stem(word), word)
    return out


def _found(word: str, source: set[str]) -> bool:
    """Exact stem match, or (both >= 4 characters) one stem a prefix of the other ("wood"/"wooden")."""
    if word in source:
        return True
    return len(word) >= 4 and word != NOT and any(len(s) >= 4 and (s.startswith(word) or word.startswith(s)) for s in source)


def support(text: str, source: set[str] | Iterable[str]) -> tuple[float, list[str]]:
    """(share of ``text``'s content words found in ``source`` (content words), the missing ones
    as written in ``text``, sorted). A text without content words is fully supported (share
    1.0): it adds nothing."""
    source = set(source)
    words = _content(text)
    missing = sorted(surface for w, surface in words.items() if not _found(w, source))
    return (1.0 - len(missing) / len(words) if words else 1.0), missing


def coverage(source_text: str, texts: Iterable[str]) -> tuple[float, list[str]]:
    """(share of ``source_text``'s content words that ``texts`` mention, the ones they miss)."""
    found: set[str] = set()
    for t in texts:
        found |= content_words(t)
    return support(source_text, found)
