"""CHAIR on COCO images (Object HalBench style), with rule-based object extraction.

CHAIR (Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018) maps the words
of a response to the 80 COCO classes through a synonym list and counts the mentioned classes
that the image's ground truth lacks. Object HalBench, the headline benchmark of RLAIF-V (Yu et
al., CVPR 2025), uses it on detailed descriptions of COCO images, with ground truth = the
instance annotations plus the classes found in the five reference captions.

The reference implementation lemmatises with NLTK (and optionally extracts objects with an
LLM); this module needs neither, trading a little recall of exotic plurals for determinism
and no dependencies:

1. lowercase; hyphens become spaces; tokens are runs of letters/digits, and every other
   non-space character is a separate punctuation token that no phrase may span;
2. each word is singularised with a small irregular map and the regular rules (-ies -> -y,
   -ves -> -f/-fe, -men -> -man, -es after s/x/ch/sh/z, -s), preferring the candidate that is
   a word of the synonym list ("vases" -> "vase", not "vas"; "buses" -> "bus");
3. the longest synonym term (up to 3 words) starting at each position wins ("hot dog" is a hot
   dog, not a dog; "teddy bear" is not a bear); a multi-word term matches its raw form, its
   form with the last word singularised ("sports balls") or with every word singularised;
4. CHAIR's special cases: "toilet seat" is a toilet and a "seat" in a response that mentions
   a toilet is dropped (not a chair); "train track" and "home plate" are consumed without a
   mention (tracks are not a train); and a person word used as a modifier of an animal or
   vehicle class yields only the latter ("baby elephant", "passenger train", "adult dog"):
   the head of an English noun-noun compound is its last noun. CHAIR lists these pairs one by
   one (baby/adult + animal, passenger + jet/train); the general rule covers them.

Known CHAIR limitations kept as they are: colour words ("an orange cat" mentions an orange),
negations ("there is no dog" mentions a dog) and word-sense ambiguity ("mouse", "bow").
Each class counts once per response (the first mention), as in the RLAIF-V evaluation code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Collection, Hashable, Iterable, Mapping

from .chair import ratio

SYNONYMS_RESOURCE = ("rlaifv.data", "coco_synonyms.txt")

#: Plurals the regular rules get wrong (the synonym list already holds "people", "children"...).
IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person", "men": "man", "women": "woman", "children": "child",
    "grandchildren": "grandchild", "mice": "mouse", "geese": "goose", "teeth": "tooth",
    "feet": "foot", "knives": "knife", "oxen": "ox", "calves": "calf", "wolves": "wolf",
    "leaves": "leaf", "shelves": "shelf", "halves": "half", "loaves": "loaf", "dice": "die",
}
ANIMAL_CLASSES = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"})
VEHICLE_CLASSES = frozenset({"bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"})
#: Extra phrases of CHAIR: a class (toilet seat) or None = consumed without a mention.
EXTRA_PHRASES: dict[str, str | None] = {"toilet seat": "toilet", "train track": None, "home plate": None}

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass(frozen=True)
class Synonyms:
    """The COCO synonym list: class names (file order) and term -> class."""

    classes: tuple[str, ...]
    term_to_class: Mapping[str, str | None]
    words: frozenset[str]  # every word that occurs in some term
    max_words: int

    @classmethod
    def from_text(cls, text: str) -> "Synonyms":
        """Parse lines "class, synonym, ..." (the first term of a line is the class)."""
        classes: list[str] = []
        term_to_class: dict[str, str | None] = {}
        for line in text.splitlines():
            terms = [t.strip().lower() for t in line.split(",") if t.strip()]
            if not terms:
                continue
            classes.append(terms[0])
            for t in terms:
                term_to_class.setdefault(t, terms[0])
        for t, c in EXTRA_PHRASES.items():
            term_to_class.setdefault(t, c)
        words = frozenset(w for t in term_to_class for w in t.split())
        return cls(tuple(classes), term_to_class, words, max(len(t.split()) for t in term_to_class))


@lru_cache(maxsize=1)
def load_synonyms() -> Synonyms:
    """The packaged list (``rlaifv/data/coco_synonyms.txt``; attribution in its README.md)."""
    package, name = SYNONYMS_RESOURCE
    return Synonyms.from_text(files(package).joinpath(name).read_text(encoding="utf-8"))


def singularize(word: str, vocab: Collection[str] = frozenset()) -> str:
    """Singular of a lowercase English noun by the rules in the module docstring.

    A word of ``vocab`` is returned unchanged ("bus", "skis", "scissors"); among the rule
    candidates the first that is in ``vocab`` wins, else the first candidate.
    """
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word in vocab or len(word) <= 2 or word.endswith(("ss", "us", "is")):
        return word
    cands: list[str] = []
    if word.endswith("ies"):
        cands.append(word[:-3] + "y")
    if word.endswith("ves"):
        cands += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("men"):
        cands.append(word[:-3] + "man")
    if word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh", "z")):
        cands.append(word[:-2])
    if word.endswith("s"):
        cands.append(word[:-1])
    for c in cands:
        if c in vocab:
            return c
    return cands[0] if cands else word


def tokenize(text: str) -> list[str]:
    """Lowercase word and punctuation tokens; hyphens split words ("hot-dog" -> hot, dog)."""
    return _TOKEN.findall(text.lower().replace("-", " "))


@dataclass(frozen=True)
class ObjectMention:
    """A COCO class found in a text: the matched (singularised) term and its class."""

    term: str
    cls: str
    start: int  # token index


def _match(tokens: list[str], sing: list[str], i: int, syn: Synonyms) -> tuple[int, str, str | None] | None:
    """Longest term starting at token i: (n_tokens, term, class or None), or None."""
    for n in range(min(syn.max_words, len(tokens) - i), 0, -1):
        raw = tokens[i : i + n]
        if not all(t.isalnum() for t in raw):
            continue
        forms = (raw, raw[:-1] + [sing[i + n - 1]], sing[i : i + n])
        for form in forms:
            term = " ".join(form)
            if term in syn.term_to_class:
                return n, term, syn.term_to_class[term]
    return None


def extract_objects(text: str, synonyms: Synonyms | None = None) -> list[ObjectMention]:
    """All COCO class mentions of ``text`` in order (not deduplicated); see the module docstring."""
    syn = synonyms or load_synonyms()
    tokens = tokenize(text)
    sing = [singularize(t, syn.words) if t.isalnum() else t for t in tokens]
    out: list[ObjectMention] = []
    i = 0
    while i < len(tokens):
        m = _match(tokens, sing, i, syn)
        if m is None:
            i += 1
            continue
        n, term, cls = m
        # person word modifying an animal/vehicle ("baby bird", "passenger train"): head wins
        if n == 1 and cls == "person" and i + 1 < len(tokens):
            nxt = _match(tokens, sing, i + 1, syn)
            if nxt is not None and nxt[2] in ANIMAL_CLASSES | VEHICLE_CLASSES:
                out.append(ObjectMention(f"{term} {nxt[1]}", nxt[2], i))  # type: ignore[arg-type]
                i += 1 + nxt[0]
                continue
        if cls is not None:
            out.append(ObjectMention(term, cls, i))
        i += n
    if any(m.cls == "toilet" for m in out):  # "the seat of the toilet" is no chair (CHAIR)
        out = [m for m in out if m.term != "seat"]
    return out


def extract_classes(text: str, synonyms: Synonyms | None = None) -> list[str]:
    """Distinct COCO classes mentioned in ``text``, in order of first mention."""
    return list(dict.fromkeys(m.cls for m in extract_objects(text, synonyms)))


@dataclass
class CocoGroundTruth:
    """Ground-truth COCO classes per image: ``objects[image_id]`` is a set of class names."""

    objects: dict[Hashable, set[str]] = field(default_factory=dict)

    @classmethod
    def from_annotations(
        cls,
        path: str | Path,
        captions_path: str | Path | None = None,
        image_ids: Iterable[Hashable] | None = None,
        synonyms: Synonyms | None = None,
    ) -> "CocoGroundTruth":
        """Load a COCO instances JSON (``images``, ``annotations``, ``categories``).

        Every listed image gets an entry (possibly empty). With ``captions_path`` (a COCO
        captions JSON), the classes found in each image's reference captions are added, as
        CHAIR / Object HalBench do. ``image_ids`` restricts the result to those images.
        """
        syn = synonyms or load_synonyms()
        keep = set(image_ids) if image_ids is not None else None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cat_name = {c["id"]: c["name"].lower() for c in data.get("categories", [])}
        objects: dict[Hashable, set[str]] = {}
        for img in data.get("images", []):
            if keep is None or img["id"] in keep:
                objects.setdefault(img["id"], set())
        for ann in data.get("annotations", []):
            iid = ann["image_id"]
            if keep is not None and iid not in keep:
                continue
            name = cat_name[ann["category_id"]]
            objects.setdefault(iid, set()).add(syn.term_to_class.get(name) or name)
        gt = cls(objects)
        if captions_path is not None:
            gt.add_captions(captions_path, syn, keep)
        return gt

    def add_captions(self, path: str | Path, synonyms: Synonyms | None = None, keep: set | None = None) -> None:
        """Add the classes mentioned in the reference captions of a COCO captions JSON."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for ann in data.get("annotations", []):
            iid = ann["image_id"]
            if keep is None or iid in keep:
                self.objects.setdefault(iid, set()).update(extract_classes(ann["caption"], synonyms))

    def get(self, image_id: Hashable) -> set[str]:
        """The classes of ``image_id``; a digit string also finds an int id (JSON keys)."""
        if image_id in self.objects:
            return self.objects[image_id]
        if isinstance(image_id, str) and image_id.strip().isdigit() and int(image_id) in self.objects:
            return self.objects[int(image_id)]
        raise KeyError(f"no COCO ground truth for image {image_id!r}")


def coco_chair(
    answers: Mapping[Hashable, str], gt: CocoGroundTruth, synonyms: Synonyms | None = None
) -> dict[str, Any]:
    """CHAIR_i, CHAIR_s, object recall and length of COCO answers (Object HalBench metrics).

    Classes are deduplicated per answer. ``chair_i`` = hallucinated / mentioned classes;
    ``chair_s`` = hallucinating answers / answers mentioning >= 1 class (``CHAIRs_refine``
    of RLAIF-V), ``chair_s_all`` = / all answers; ``recall`` = mean per-answer share of
    ground-truth classes mentioned (images without ground truth are left out),
    ``recall_micro`` = sum / sum (RLAIF-V's ``obj_rec``); ``avg_length`` in whitespace words.
    ``per_answer`` lists {image_id, mentioned, hallucinated, gt} per answer.
    """
    syn = synonyms or load_synonyms()
    per_answer: list[dict[str, Any]] = []
    n_words = 0
    recalls: list[float] = []
    n_gt = n_correct = 0
    for image_id, text in answers.items():
        truth = gt.get(image_id)
        mentioned = extract_classes(text, syn)
        hallucinated = [c for c in mentioned if c not in truth]
        correct = len(mentioned) - len(hallucinated)
        n_words += len(text.split())
        n_gt += len(truth)
        n_correct += correct
        if truth:
            recalls.append(correct / len(truth))
        per_answer.append(
            {"image_id": image_id, "mentioned": mentioned, "hallucinated": hallucinated, "gt": sorted(truth)}
        )
    n_answers = len(per_answer)
    n_mentions = sum(len(a["mentioned"]) for a in per_answer)
    n_hall = sum(len(a["hallucinated"]) for a in per_answer)
    n_with = sum(1 for a in per_answer if a["mentioned"])
    n_hall_answers = sum(1 for a in per_answer if a["hallucinated"])
    return {
        "n_answers": n_answers,
        "n_answers_with_mentions": n_with,
        "n_hallucinated_answers": n_hall_answers,
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hall,
        "chair_i": ratio(n_hall, n_mentions),
        "chair_s": ratio(n_hall_answers, n_with),
        "chair_s_all": ratio(n_hall_answers, n_answers),
        "recall": ratio(sum(recalls), len(recalls)),
        "recall_micro": ratio(n_correct, n_gt),
        "avg_length": ratio(n_words, n_answers),
        "per_answer": per_answer,
    }
