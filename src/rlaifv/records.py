"""Typed records that flow between the stages, each with a schema version.

Every record has a stable ``id`` (the key by which stores skip finished work on resume) and
round-trips through ``to_dict`` / ``from_dict``. ``from_dict`` validates: a malformed record
raises :class:`RecordError` naming the record, never a bare ``KeyError``.

Flow (RLAIF-V, Yu et al. 2025, Sec. 3): Prompt -> Candidate (sample) -> Claim (divide) ->
PolarQuestion (ask) -> ClaimScore (conquer) -> ScoredCandidate -> PreferencePair (pairs).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = 1

T = TypeVar("T", bound="Record")


class RecordError(ValueError):
    """A record is malformed; the message names the record (and file/line when known)."""


@dataclass
class Record:
    """Base class: schema version, dict round-trip and validation."""

    kind: ClassVar[str] = "record"

    @property
    def id(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def validate(self) -> None:
        """Raise RecordError if a field holds an impossible value. Subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        d["kind"] = self.kind
        return d

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise RecordError(f"{cls.kind}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise RecordError(f"{cls.kind} {d.get('id', '?')!r}: schema_version {version} is not {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f)]
        label = d.get("prompt_id") or d.get("id") or d.get("candidate_id") or "?"
        if missing:
            raise RecordError(f"{cls.kind} {label!r}: missing field(s) {', '.join(missing)}")
        try:
            rec = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise RecordError(f"{cls.kind} {label!r}: {e}") from e
        _check_field_types(rec, f"{cls.kind} {label!r}")
        rec.validate()
        return rec


def _fits(value: Any, typ: Any) -> bool:
    """Does a JSON value fit a field annotation? (str, int, float, bool, bytes, X | None, list[X],
    dict; ints count as floats, bools as neither; other annotations are not checked)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if typ is type(None):
        return value is None
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ in (str, bool, bytes):
        return isinstance(value, typ)
    if origin is list or typ is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or typ is dict:
        return isinstance(value, dict)
    return True


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` once per class: it evaluates the string annotations on every call
    (about 0.2 ms a record, most of the time of reading a large stage folder)."""
    return typing.get_type_hints(cls)


def _check_field_types(rec: "Record", label: str) -> None:
    """RecordError naming the record and field when a field holds a value of the wrong JSON type
    (e.g. ``"image": 123``), so it fails here instead of as a traceback deep in a stage."""
    hints = _type_hints(type(rec))
    for f in dataclasses.fields(rec):
        value = getattr(rec, f.name)
        if f.name in hints and not _fits(value, hints[f.name]):
            raise RecordError(f"{label}: field {f.name!r} must be {_type_name(hints[f.name])}, got {value!r:.60} ({type(value).__name__})")


def _type_name(typ: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", bytes: "bytes",
             type(None): "null", dict: "a mapping", list: "a list"}
    typ = typing.get_origin(typ) if typing.get_origin(typ) in (dict, list) else typ
    args = [a for a in typing.get_args(typ)] if typing.get_origin(typ) in (typing.Union, types.UnionType) else [typ]
    return " or ".join(names.get(a, getattr(a, "__name__", None) or str(a)) for a in args)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


@dataclass
class Prompt(Record):
    """An (image, question) to answer. ``image`` is a path (relative paths resolve against the
    prompts file's folder) or ``None`` when ``image_bytes`` holds the encoded file."""

    kind: ClassVar[str] = "prompt"
    prompt_id: str
    question: str
    image: str | None = None
    image_bytes: bytes | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.prompt_id

    def validate(self) -> None:
        if not isinstance(self.prompt_id, str) or not self.prompt_id:
            raise RecordError("prompt: empty or non-string prompt_id")
        if not isinstance(self.question, str) or not self.question.strip():
            raise RecordError(f"prompt {self.prompt_id!r}: empty question")
        if self.image is None and self.image_bytes is None:
            raise RecordError(f"prompt {self.prompt_id!r}: no image (give 'image' path or 'image_bytes')")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.image_bytes is not None:
            import base64

            d["image_bytes"] = base64.b64encode(self.image_bytes).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prompt":
        if isinstance(d, dict) and isinstance(d.get("image"), dict) and set(d["image"]) <= {"bytes", "path"}:
            # a Hugging Face `datasets` Image() column: {"bytes": ..., "path": ...}; bytes win
            cell = d["image"]
            d = {**d, "image": None if cell.get("bytes") else cell.get("path"),
                 "image_bytes": cell.get("bytes") or d.get("image_bytes")}
        if isinstance(d, dict) and isinstance(d.get("image_bytes"), str):
            import base64

            try:
                d = {**d, "image_bytes": base64.b64decode(d["image_bytes"], validate=True)}
            except ValueError as e:  # binascii.Error: report it as a bad record, like any other field
                raise RecordError(f"prompt {d.get('prompt_id', '?')!r}: image_bytes is not valid base64 ({e})") from e
        return super().from_dict(d)


@dataclass
class Decoding:
    """Decoding settings shared by all candidates of a prompt (deconfounded sampling)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    do_sample: bool = True


@dataclass
class Candidate(Record):
    """One sampled answer. (prompt_id, sample_index, seed) regenerate it exactly."""

    kind: ClassVar[str] = "candidate"
    prompt_id: str
    sample_index: int
    seed: int
    text: str
    decoding: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    @property
    def id(self) -> str:
        return f"{self.prompt_id}#{self.sample_index}"


@dataclass
class Claim(Record):
    """An atomic, self-contained factual claim split from a candidate answer."""

    kind: ClassVar[str] = "claim"
    candidate_id: str
    claim_index: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.candidate_id}/{self.claim_index}"


@dataclass
class PolarQuestion(Record):
    """The yes/no question asked of the labeler for one claim."""

    kind: ClassVar[str] = "question"
    claim_id: str
    claim: str
    question: str

    @property
    def id(self) -> str:
        return self.claim_id


@dataclass
class ClaimScore(Record):
    """The labeler's verdict: rejected iff p_no >= p_yes (RLAIF-V Sec. 3.2, ties reject)."""

    kind: ClassVar[str] = "claim_score"
    claim_id: str
    question: str
    p_yes: float
    p_no: float

    @property
    def id(self) -> str:
        return self.claim_id

    @property
    def accepted(self) -> bool:
        return self.p_yes > self.p_no

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["accepted"] = self.accepted
        return d


@dataclass
class ScoredCandidate(Record):
    """A candidate with its claim scores; score = -(number of rejected claims) (Sec. 3.2)."""

    kind: ClassVar[str] = "scored_candidate"
    candidate_id: str
    prompt_id: str
    text: str
    claims: list[str]
    rejected: list[bool]
    score: float

    @property
    def id(self) -> str:
        return self.candidate_id


@dataclass
class PreferencePair(Record):
    """A DPO preference pair with its provenance (which candidates, scores, models)."""

    kind: ClassVar[str] = "pair"
    prompt_id: str
    question: str
    image: str | None
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    chosen_score: float
    rejected_score: float
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.chosen_id}>{self.rejected_id}"


RECORD_TYPES: dict[str, type[Record]] = {
    c.kind: c for c in (Prompt, Candidate, Claim, PolarQuestion, ClaimScore, ScoredCandidate, PreferencePair)
}
