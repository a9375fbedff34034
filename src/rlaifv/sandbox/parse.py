"""Map any sandbox answer back to object mentions, so that the sandbox metrics are exact.

Sentences the parser cannot read are returned in ``Parsed.unparsed`` (counted and reported by
the metrics), never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .world import COLOURS, POSITIONS, SHAPES, SIZES

_SIZE = "|".join(SIZES)
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_POS = "|".join(p for p in POSITIONS if p != "center")
_OBJ = rf"(?:(?P<size>{_SIZE}) )?(?:(?P<colour>{_COLOUR}) )?(?P<shape>{_SHAPE})"
_PLACE = rf"(?: (?:at the (?P<pos>{_POS})|in the (?P<center>center)))?"
_PATTERNS = [
    re.compile(rf"^there (?:is|are) (?:a|an|one) {_OBJ}{_PLACE}$"),
    re.compile(rf"^(?:a|an|one) {_OBJ} is{_PLACE}$"),
    re.compile(rf"^there is no {_OBJ}{_PLACE}$"),  # negation: parsed, but not a mention
]
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Mention:
    """One object mentioned in an answer; attributes are None when the sentence omits them."""

    shape: str
    colour: str | None = None
    size: str | None = None
    cell: int | None = None
    sentence: str = ""


@dataclass
class Parsed:
    mentions: list[Mention] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    n_sentences: int = 0


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(text.strip()) if s.strip()]


def parse_sentence(sentence: str) -> tuple[bool, Mention | None]:
    """(parsed?, mention). A parsed negation ("There is no star.") gives (True, None)."""
    s = sentence.strip().rstrip(".!?").strip().lower()
    for i, pat in enumerate(_PATTERNS):
        m = pat.match(s)
        if not m:
            continue
        if i == 2:
            return True, None
        pos = m.group("pos") or m.group("center")
        cell = POSITIONS.index(pos) if pos else None
        return True, Mention(m.group("shape"), m.group("colour"), m.group("size"), cell, sentence.strip())
    return False, None


def parse_answer(text: str) -> Parsed:
    """Parse a description (or any sandbox answer) into mentions and unparsed sentences."""
    out = Parsed()
    for sent in split_sentences(text):
        out.n_sentences += 1
        ok, mention = parse_sentence(sent)
        if not ok:
            out.unparsed.append(sent)
        elif mention is not None:
            out.mentions.append(mention)
    return out
