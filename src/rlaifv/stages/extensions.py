"""Extension points: what the method's stages take from outside without importing it.

The stages never import ``rlaifv.sandbox`` (``tests/test_stage_boundaries.py``). Where a stage
offers something only the sandbox can provide, it asks a registry here, and the sandbox
registers its implementation when it is imported (``rlaifv.sandbox.loop``; the ``rlaifv`` CLI
imports it, so ``--sandbox-prompts``, ``demo`` and ``iterate --preset sandbox`` work):

* a **prompt source** (``"sandbox"``): ``source(folder, n, split, start) -> prompts file``, n
  held-out scenes written as ordinary prompt records (``sandbox_prompts`` of feedback,
  best-of-n and iterate);
* an **evaluator** (``"sandbox"``): a checkpoint measured on data with its own ground truth
  (held-out scenes: CHAIR, recall, POPE), for ``iterate``'s ``selection.kind: sandbox`` and its
  per-iteration report (``report_scenes``).

Conquer modes have their own registry in ``stages/conquer.py`` (the sandbox's stand-ins are
registered by ``rlaifv.sandbox.standins``). Nothing registered here runs unless a config asks
for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ConfigError

#: (folder, n, split, start) -> the prompts file written into ``folder``
PromptSource = Callable[[Path, int, str, int], Path]


@dataclass(frozen=True)
class Evaluator:
    """Measures a model (folder or ``sandbox:NAME``) on held-out data with ground truth.

    ``selection_metrics(model, n, seed, options, progress, pope)`` -> numbers for checkpoint
    selection (``chair_i``, ``recall`` and, with ``pope``, ``pope_f1``; lower ``chair_i`` is
    better); ``report(model, n, pope, options, progress)`` -> the numbers of the per-iteration
    report row. ``options``: how to load the model (``models.options.LoadOptions``; None: CPU,
    float32); ``progress(done, total, message)`` or None.
    """

    name: str
    selection_metrics: Callable[..., dict[str, float]]
    report: Callable[..., dict[str, float]]


_PROMPT_SOURCES: dict[str, PromptSource] = {}
_EVALUATORS: dict[str, Evaluator] = {}

_HOW = "a module registers one on import with register_prompt_source / register_evaluator (the rlaifv CLI loads the sandbox's)"


def register_prompt_source(name: str, source: PromptSource) -> None:
    """Make ``name`` available as a prompt source (re-registering replaces it)."""
    _PROMPT_SOURCES[name] = source


def prompt_source(name: str, what: str = "") -> PromptSource:
    """The registered prompt source ``name``; ConfigError saying how to get it otherwise."""
    if name not in _PROMPT_SOURCES:
        raise ConfigError(f"{what or name + ' prompts'} need the {name!r} prompt source, which is not registered: {_HOW}")
    return _PROMPT_SOURCES[name]


def register_evaluator(evaluator: Evaluator) -> None:
    """Make ``evaluator.name`` available (re-registering replaces it)."""
    _EVALUATORS[evaluator.name] = evaluator


def evaluator(name: str, what: str = "") -> Evaluator:
    """The registered evaluator ``name``; ConfigError saying how to get it otherwise."""
    if name not in _EVALUATORS:
        raise ConfigError(f"{what or name + ' evaluation'} needs the {name!r} evaluator, which is not registered: {_HOW}")
    return _EVALUATORS[name]
