"""The model-loading flags, defined once for every command that loads a model.

``@model_options()`` (put under ``@app.command``) adds one flag per ``LoadOptions`` field to the
command -- ``--device``, ``--dtype``, ``--device-map``, ``--max-memory``,
``--attn-implementation``, ``--load-in-4bit``, ``--load-in-8bit``, ``--trust-remote-code`` --
with the field's help, in a "Model loading" panel of ``--help``. The command receives them as
one argument, ``load: ModelFlags``, holding only the flags that were given (so a YAML file's
values stand unless a flag overrides them). ``@model_options(labeler=True)`` also adds
``--labeler-device``, ``--labeler-dtype``, ``--labeler-device-map`` and ``--labeler-max-memory``
for the commands that load a policy and a labeler (feedback, best-of-n, iterate).

Rule for those commands: the shared flags apply to every model the command loads (policy,
labeler, the chat LLM of divide/ask); a ``--labeler-*`` flag overrides them for the labeler,
and a labeler placement flag (``--labeler-device`` or ``--labeler-device-map``) replaces the
inherited placement (device, device_map, max_memory) -- so ``--device cuda:0
--labeler-device-map auto`` keeps the policy on one GPU and spreads the labeler over all.

The flags are checked before the command does anything (``LoadOptions`` checks: one line,
exit code 2). This module imports no torch at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import typer

from .models.options import LoadOptions

PANEL = "Model loading"
#: the fields the --labeler-* flags can set (placement and dtype: what differs for a large labeler)
LABELER_FIELDS = ("device", "dtype", "device_map", "max_memory")
PLACEMENT = ("device", "device_map", "max_memory")


@dataclass
class ModelFlags:
    """The model-loading flags a command was given, as config overrides (absent = not given)."""

    model: dict[str, Any] = field(default_factory=dict)  # every model the command loads
    labeler: dict[str, Any] = field(default_factory=dict)  # the labeler: `model` + the --labeler-* flags

    def options(self) -> LoadOptions:
        """The options themselves, for a command without a config (defaults for the flags not given)."""
        return LoadOptions(**self.model)

    def feedback(self) -> dict[str, Any]:
        """Overrides of a FeedbackConfig-shaped config: sample (policy), conquer (labeler), divide/ask LLMs."""
        out: dict[str, Any] = {"sample": dict(self.model), "conquer": dict(self.labeler)}
        if self.model:
            out.update(divide={"llm": dict(self.model)}, ask={"llm": dict(self.model)})
        return out


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """Drop the flags that were not given (None; a bool flag not given is False)."""
    return {k: v for k, v in values.items() if v is not None and v is not False}


def model_flags(model: dict[str, Any], labeler: dict[str, Any] | None = None) -> ModelFlags:
    """ModelFlags from the raw flag values, checked (ConfigError naming the flag)."""
    model = _given(model)
    LoadOptions.build(model)
    own = _given(labeler or {})
    lab = dict(model)
    if own.keys() & {"device", "device_map"}:  # the labeler's own placement replaces the inherited one
        for key in PLACEMENT:
            lab.pop(key, None)
    lab.update(own)
    if own:
        LoadOptions.build(lab, "labeler-")
    return ModelFlags(model, lab)


def _parameters(prefix: str = "", names: tuple[str, ...] | None = None) -> list[inspect.Parameter]:
    """One typer option per LoadOptions field (help text from the field's metadata)."""
    out = []
    for f in dataclasses.fields(LoadOptions):
        if names is not None and f.name not in names:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        text = f.metadata.get("help", "")
        if prefix:
            text = f"The labeler only (default: {flag.replace('labeler-', '')}). {text}"
        if isinstance(f.default, bool):
            annotation, option = bool, typer.Option(False, flag, help=text, rich_help_panel=PANEL)
        else:
            annotation, option = Optional[str], typer.Option(None, flag, help=text, rich_help_panel=PANEL)
        out.append(inspect.Parameter(prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return out


def model_options(labeler: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command gets the model-loading flags (module docstring) and is called
    with ``load=ModelFlags(...)`` instead of them; its own signature declares ``load``."""
    shared = _parameters()
    own = _parameters("labeler_", LABELER_FIELDS) if labeler else []

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        if "load" not in sig.parameters:
            raise TypeError(f"{fn.__name__}: a command under @model_options needs a `load` parameter")
        kept = [p for p in sig.parameters.values() if p.name != "load"]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name, None) for p in shared}
            lab = {p.name[len("labeler_"):]: kwargs.pop(p.name, None) for p in own}
            return fn(*args, load=model_flags(values, lab), **kwargs)

        command.__signature__ = sig.replace(parameters=kept + shared + own)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in kept + shared + own if p.annotation is not inspect.Parameter.empty}
        return command

    return decorate


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` merged into ``a`` section by section (nested dicts merge, other values replace)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
