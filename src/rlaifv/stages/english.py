"""Small closed-class English lexicon and verb morphology shared by the rule-based stages.

The rule-based ``divide`` and ``ask`` backends (RLAIF-V, Yu et al. 2025, Sec. 3.1) need to find
the finite verb of a simple declarative sentence: ``divide`` to tell a clause from a noun
phrase before splitting on "and", ``ask`` to move the auxiliary to the front or add do-support.
Full parsing is out of scope; this module holds the word lists and a conservative finder that
prefers "no verb found" (the callers then fall back safely) over a wrong guess.
"""

from __future__ import annotations

import re

#: Words that open a noun phrase; a word right after one is never taken as the finite verb.
DETERMINERS = frozenset(
    "a an the this that these those his her its their my our your some several many few both each "
    "every another one two three four five six seven eight nine ten no any all".split()
)
#: Determiners that make the noun phrase singular / plural regardless of the noun.
SINGULAR_DETERMINERS = frozenset("a an one this that each every another".split())
PLURAL_DETERMINERS = frozenset("these those several many few both two three four five six seven eight nine ten".split())
PREPOSITIONS = frozenset(
    "on in at near under behind beside next above below inside outside over between by along across "
    "against among around atop beneath underneath onto into toward towards through".split()
)
RELATIVES = frozenset("that which who whom whose where while".split())
SUBJECT_PRONOUNS = frozenset("it they he she we i you".split())
PLURAL_PRONOUNS = frozenset("they we you i".split())
BE_FORMS = frozenset("is are was were am".split())
HAVE_FORMS = frozenset("has have had".split())
DO_FORMS = frozenset("does do did".split())
MODALS = frozenset("can could will would shall should may might must".split())
AUXILIARIES = BE_FORMS | HAVE_FORMS | DO_FORMS | MODALS
#: Negative contractions -> (auxiliary, "not"), so that negation survives inversion.
CONTRACTIONS = {
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "doesn't": "does", "don't": "do",
    "didn't": "did", "hasn't": "has", "haven't": "have", "hadn't": "had", "can't": "can", "cannot": "can",
    "couldn't": "could", "won't": "will", "wouldn't": "would", "shouldn't": "should", "mustn't": "must",
}
IRREGULAR_PLURALS = frozenset("people men women children mice geese feet teeth police cattle sheep fish".split())

#: Regular verbs common in image descriptions (base forms); inflections are generated.
REGULAR_VERBS = frozenset(
    "appear bark block border brush carry chase climb close contain cook cover cross crowd dance "
    "depict display dominate drag dress enter exit extend face feature fill fix float follow frame gather "
    "gaze graze grab help hike hop hover hug include jog jump kick kiss land laugh lean lift line look "
    "mix move nod occupy open overlook paint park pass perch pet plan play point pose protrude pull push "
    "reach reflect rest seem serve shop show skate ski skip slice smile smoke splash spray stare stay step "
    "stop stretch support surf surround swim talk tap touch type use wait walk wash watch wave work wrap".split()
)
#: Verbs whose final consonant doubles before -ed ("stop" -> "stopped").
DOUBLING = frozenset("drag grab hop hug jog nod pat pet plan shop skip step stop tap wrap chat clap drop rub".split())
#: Irregular verbs: base -> simple past ("held" -> "hold" when reversed).
IRREGULAR_PAST = {
    "be": "was", "have": "had", "do": "did", "go": "went", "hold": "held", "sit": "sat", "run": "ran",
    "wear": "wore", "stand": "stood", "ride": "rode", "eat": "ate", "drink": "drank", "lie": "lay",
    "lay": "laid", "hang": "hung", "fly": "flew", "swim": "swam", "throw": "threw", "catch": "caught",
    "grow": "grew", "sleep": "slept", "read": "read", "say": "said", "drive": "drove", "cut": "cut",
    "write": "wrote", "bend": "bent", "kneel": "knelt", "rise": "rose", "shine": "shone", "sing": "sang",
    "sell": "sold", "buy": "bought", "hit": "hit", "fall": "fell", "leave": "left", "lead": "led",
    "hide": "hid", "spread": "spread", "swing": "swung", "light": "lit", "cast": "cast", "feed": "fed",
    "come": "came", "see": "saw", "take": "took", "make": "made", "give": "gave", "get": "got",
    "keep": "kept", "find": "found", "put": "put", "set": "set", "stick": "stuck", "wake": "woke",
    "bite": "bit", "blow": "blew", "break": "broke", "bring": "brought", "build": "built", "draw": "drew",
    "hear": "heard", "know": "knew", "meet": "met", "pay": "paid", "shake": "shook", "sink": "sank",
    "slide": "slid", "speak": "spoke", "spin": "spun", "strike": "struck", "sweep": "swept",
    "tell": "told", "think": "thought", "win": "won", "become": "became", "begin": "began", "let": "let",
    "shut": "shut", "fit": "fit", "dig": "dug", "fight": "fought", "lose": "lost", "send": "sent",
}
#: Past participles that mark "has/had" as an auxiliary ("has eaten") rather than a main verb.
PARTICIPLES = frozenset(
    "been seen taken eaten given written fallen broken driven ridden stolen shaken woken spoken chosen "
    "frozen hidden beaten bitten gotten grown thrown shown blown drawn known worn torn flown done gone".split()
)
#: "-ed" words that are not verbs.
NOT_PARTICIPLES = frozenset("red bed shed sled hundred naked wicked".split())


def third_person(base: str) -> str:
    """"hold" -> "holds", "carry" -> "carries", "watch" -> "watches"."""
    if base in ("have", "be", "do", "go"):
        return {"have": "has", "be": "is", "do": "does", "go": "goes"}[base]
    if re.search(r"(s|sh|ch|x|z|o)$", base):
        return base + "es"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ies"
    return base + "s"


def simple_past(base: str) -> str:
    """"walk" -> "walked", "carry" -> "carried", "stop" -> "stopped", "hold" -> "held"."""
    if base in IRREGULAR_PAST:
        return IRREGULAR_PAST[base]
    if base.endswith("e"):
        return base + "d"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ied"
    if base in DOUBLING:
        return base + base[-1] + "ed"
    return base + "ed"


def _build_forms() -> dict[str, tuple[str, str]]:
    forms: dict[str, tuple[str, str]] = {}
    for base in REGULAR_VERBS | set(IRREGULAR_PAST):
        if base in ("be", "have", "do"):
            continue
        forms.setdefault(simple_past(base), (base, "past"))
        forms.setdefault(third_person(base), (base, "pres3"))
    forms["lay"] = ("lie", "past")  # "The dogs lay on the grass": past of "lie" is the usual reading
    return forms


#: Inflected form -> (base, "past" | "pres3") for every verb in the lexicon.
VERB_FORMS = _build_forms()
BASE_VERBS = frozenset(REGULAR_VERBS | set(IRREGULAR_PAST)) - {"be", "have", "do"}


def bare(token: str) -> str:
    """Lower-case a token and strip surrounding punctuation ("Dog," -> "dog")."""
    return token.lower().strip(".,;:!?\"'()[]“”‘’")


def is_plural_noun(word: str) -> bool:
    """A crude plural test on a head noun: "dogs", "people" yes; "glass", "bus", "cat" no."""
    w = bare(word)
    if w in IRREGULAR_PLURALS:
        return True
    return len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is", "'s"))


def guess_base(word: str) -> tuple[str, str] | None:
    """(base, tense) of a regular inflected form outside the lexicon, or None.

    "clutches" -> ("clutch", "pres3"); "carried" -> ("carry", "past"); "placed" -> ("place", "past").
    The "-ed" rule adds back an "e" only after c, v, z or u, so some bases come out wrong
    ("created" -> "creat"); the lexicon covers the common verbs.
    """
    w = word.lower()
    if w in VERB_FORMS:
        return VERB_FORMS[w]
    if len(w) > 4 and w.endswith("ied"):
        return w[:-3] + "y", "past"
    if len(w) > 4 and w.endswith("ed") and w not in NOT_PARTICIPLES:
        stem = w[:-2]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] in "bdgmnprt":
            stem = stem[:-1]
        elif stem[-1] in "cvzu":
            stem += "e"
        return stem, "past"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")):
        if w.endswith("ies"):
            return w[:-3] + "y", "pres3"
        if re.search(r"(ches|shes|sses|xes|zzes|oes)$", w):
            return w[:-2], "pres3"
        return w[:-1], "pres3"
    return None


def find_finite_verb(tokens: list[str]) -> tuple[int, str, str] | None:
    """(index, kind, base) of the main finite verb of a simple clause, or None.

    ``kind`` is "aux" (be/have/do/modal, base = the auxiliary itself), "pres3", "past" or
    "base" (present plural, "The cats sleep"). The subject must be non-empty and free of
    relative clauses; a word right after a determiner or possessive is a noun ("the left
    cup"), and a word followed by an auxiliary or another verb is the subject's head noun
    ("The red cats are ...", "The rose is ..."). Lexicon verbs win; an unknown "-s" word is
    accepted before a later lexicon verb, an unknown "-ed" word only when none follows (it is
    more likely a participle: "A man dressed in black stands"), as is a lexicon past form
    followed by a preposition.
    """
    known: tuple[int, str, str] | None = None
    guess_s: tuple[int, str, str] | None = None
    guess_ed: tuple[int, str, str] | None = None
    for i in range(1, len(tokens)):
        subject = [bare(t) for t in tokens[:i]]
        first_guess = min((g[0] for g in (guess_s, guess_ed) if g is not None), default=i)
        if "and" in subject[first_guess:]:
            break  # a verb after "and" is coordinated with the guess: "sat on the mat and is ..."
        if any(w in RELATIVES for w in subject) or _after_determiner(tokens, i):
            continue
        hit = _classify(tokens, i, subject)
        if hit is None:
            continue
        participle_like = hit[0] == "past" and i + 1 < len(tokens) and bare(tokens[i + 1]) in PREPOSITIONS | {"with", "by"}
        if hit[1] in ("aux", "known") and not participle_like:
            known = (i, hit[0], hit[2])
            break
        if hit[0] == "pres3" and guess_s is None:
            guess_s = (i, "pres3", hit[2])
        elif hit[0] == "past" and guess_ed is None:
            guess_ed = (i, "past", hit[2])
    if guess_s is not None and (known is None or guess_s[0] < known[0]):
        return guess_s
    return known or guess_ed


def _after_determiner(tokens: list[str], i: int) -> bool:
    prev = tokens[i - 1]
    return bare(prev) in DETERMINERS or prev.lower().endswith(("'s", "’s")) or bare(prev).isdigit()


def _classify(tokens: list[str], i: int, subject: list[str]) -> tuple[str, str, str] | None:
    """(kind, source, base) for token i: source "aux"/"known" (lexicon) or "guess"."""
    w = bare(tokens[i])
    if tokens[i].rstrip().endswith(","):
        return None
    if w in AUXILIARIES or w in CONTRACTIONS:
        return "aux", "aux", CONTRACTIONS.get(w, w)
    nxt = bare(tokens[i + 1]) if i + 1 < len(tokens) else ""
    if nxt in AUXILIARIES or nxt in CONTRACTIONS:
        return None  # this word is the subject's head noun ("The rose is red")
    if w in VERB_FORMS:
        base, tense = VERB_FORMS[w]
        return tense, "known", base
    if w in BASE_VERBS and (is_plural_noun(subject[-1]) or subject[0] in PLURAL_DETERMINERS or subject[-1] in PLURAL_PRONOUNS):
        return "base", "known", w
    if nxt in VERB_FORMS or nxt in BASE_VERBS:
        return None  # an unknown word before a known verb is the head noun ("The benches line ...")
    guess = guess_base(w)
    if guess is not None and not is_plural_noun(subject[-1]):
        return guess[1], "guess", guess[0]
    return None


def is_participle(token: str) -> bool:
    """True for "eaten", "walked", "held": "has" before it is an auxiliary, not "possess"."""
    w = bare(token)
    if w in PARTICIPLES or (w in VERB_FORMS and VERB_FORMS[w][1] == "past"):
        return True
    return len(w) > 4 and w.endswith("ed") and w not in NOT_PARTICIPLES
