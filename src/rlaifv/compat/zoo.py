"""The registry of tiny real-template architectures (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the compatibility matrix.

    ``build(seed)`` returns a tiny, randomly initialised ``(model, processor)``: the model an
    ``AutoModelForImageTextToText`` class, the processor built without torchvision, carrying
    the family's real chat template (``template``, a file name in ``templates/``, or None for
    a family without one, e.g. PaliGemma) and a tokenizer of the family's kind.
    """

    name: str  # e.g. "llava-1.5"
    model_type: str  # config.model_type, e.g. "llava"
    template: str | None  # file in templates/ (without .jinja), None = no chat template
    tokenizer_kind: str  # "bytelevel" | "sentencepiece" | "smollm2"
    build: Callable[[int], tuple[Any, Any]]
    first_answer: str  # how the template places the first answer token, e.g. '" Yes" (▁Yes)'
    notes: tuple[str, ...] = field(default_factory=tuple)  # anything a user should know (fallbacks, workarounds)


def load_template(name: str) -> str:
    """The text of ``templates/<name>.jinja`` exactly as published (see PROVENANCE.md)."""
    return (resources.files("rlaifv.compat") / "templates" / f"{name}.jinja").read_text()


_MODULES = ("zoo_llava", "zoo_idefics", "zoo_gemma", "zoo_qwen", "zoo_others")


def all_entries() -> list[ZooEntry]:
    """Every architecture of the matrix, in the order of ``docs/models.md``."""
    from importlib import import_module

    out: list[ZooEntry] = []
    for name in _MODULES:
        out += import_module(f"rlaifv.compat.{name}").ENTRIES
    return out


def entry(name: str) -> ZooEntry:
    """The entry called ``name`` (e.g. ``llava-1.5``)."""
    found = {e.name: e for e in all_entries()}
    if name not in found:
        raise KeyError(f"no zoo entry {name!r}; known: {sorted(found)}")
    return found[name]
