"""``rlaifv iterate``: the paper's iterative alignment (RLAIF-V Sec. 3.2, "iterative feedback learning").

Each iteration i = 1..k, under ``out/iter-i/``:

1. ``prompts/``: fresh prompts (sandbox: ``sandbox_prompts`` new val scenes per iteration, from
   scene index 1,000,000 on, disjoint from the selection and report scenes; user prompts: all,
   or a disjoint slice of ``prompts_per_iteration``, never the held-out selection prompts);
2. ``feedback/``: sample with the current policy -> divide -> ask -> conquer with the labeler
   (a separate model, or ``labeler='self'``: the current policy labels its own answers) -> pairs;
3. ``train/``: DPO from the current policy with the current policy as reference (reference
   log-probs cached once), checkpoints every 1/``checkpoints_per_epoch`` epoch;
4. ``selection.json``: the best checkpoint (``select.py``) becomes the next policy and reference.
   On a user's prompts the default (``labeler``) needs no ground truth: the labeler-judged
   hallucination rate on ``selection.holdout`` prompts held out once, in ``out/holdout/`` (with
   ``labeler: self`` each iteration's judge is its own starting policy, so the rates of
   different iterations are not on one scale);
5. a report row: the selection's labeler-judged numbers of the chosen policy and, on a sandbox
   run, sandbox metrics on ``report_scenes`` test scenes (CHAIR_s, CHAIR_i, recall, POPE F1,
   length), pairs, wall time -> ``out/report.{md,json,png}``.

Nothing of the sandbox runs unless the config asks for a sandbox run (``sandbox_prompts > 0``);
the sandbox's prompt source and evaluator are extensions it registers (``stages/extensions.py``),
never imported here. ``iter-i/done.json`` marks a finished iteration; every step inside is
resumable on its own, so rerunning the same command after a kill continues where it stopped.
One YAML (``IterateConfig``: top-level fields plus ``feedback``, ``train`` and ``selection``
sections) describes the whole run.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from ..eval.iterations import write_report
from ..eval.report import write_json
from ..progress import progress_bar
from ..records import Prompt
from ..store import read_records, write_manifest
from ..training.dpo import DPOConfig, list_checkpoints, train_dpo
from .conquer import check_conquer_inputs
from .extensions import evaluator, prompt_source
from .feedback import FeedbackConfig, feedback
from .select import SelectionConfig, labeler_metrics, select_checkpoint

SANDBOX_PROMPT_START = 1_000_000
HOLDOUT_START = 2_000_000  # sandbox runs with labeler selection: held-out val scenes, disjoint from every other slice
#: the shipped sandbox models (``models/load.py``), the defaults of a sandbox run only
SANDBOX_POLICY, SANDBOX_LABELER = "sandbox:policy", "sandbox:labeler"
SANDBOX_REPORT_SCENES = 200


@dataclass
class IterateConfig:
    """One config for a whole iterative run (YAML sections: feedback, train, selection)."""

    out: str = "runs/iterate"
    iterations: int = 4
    policy: str = ""  # the starting policy (and first reference); required (a sandbox run: sandbox:policy)
    labeler: str = ""  # labeler model, or "self": each iteration's policy labels its own answers; required (sandbox: sandbox:labeler)
    prompts: str = ""  # user prompts file (JSONL/parquet of Prompt records)
    prompts_per_iteration: int = 0  # user prompts: >0 uses a disjoint slice per iteration (wraps around)
    sandbox_prompts: int = 0  # >0: a sandbox run: this many fresh sandbox describe prompts per iteration
    #: sandbox runs only: test scenes for the per-iteration report (0: none; -1: 200 on a sandbox run, 0 otherwise)
    report_scenes: int = -1
    report_pope: bool = True  # sandbox report: also POPE (3 splits)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    train: DPOConfig = field(default_factory=DPOConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


def resolve(cfg: IterateConfig) -> IterateConfig:
    """The run's settings with the run-dependent defaults filled in, or ConfigError before any work.

    A sandbox run (``sandbox_prompts > 0``) defaults to the shipped models, sandbox selection and
    a 200-scene report. On a user's prompts the models are required, selection defaults to the
    labeler-judged hallucination rate, and nothing evaluates on sandbox scenes.
    """
    sandbox = cfg.sandbox_prompts > 0
    policy = cfg.policy or (SANDBOX_POLICY if sandbox else "")
    labeler = cfg.labeler or (SANDBOX_LABELER if sandbox else "")
    if not policy:
        raise ConfigError("iterate: give --policy (or policy in the config): the starting policy")
    if not labeler:
        raise ConfigError("iterate: give --labeler (or labeler in the config): a labeler model, or 'self' for self-feedback")
    if not sandbox and not cfg.prompts:
        raise ConfigError("iterate needs --prompts (a prompts file) or --sandbox-prompts N")
    kind = cfg.selection.kind or ("sandbox" if sandbox else "labeler")
    report = cfg.report_scenes if cfg.report_scenes >= 0 else (SANDBOX_REPORT_SCENES if sandbox else 0)
    if not sandbox and kind == "sandbox":
        raise ConfigError("selection kind 'sandbox' measures held-out sandbox scenes: it needs a sandbox run (sandbox_prompts > 0); "
                          "on your own prompts use 'labeler' (the default), 'command' or 'last'")
    if not sandbox and report > 0:
        raise ConfigError(f"report_scenes {report} evaluates the policy on synthetic sandbox scenes: only for a sandbox run "
                          "(sandbox_prompts > 0); set report_scenes: 0")
    _check_served(cfg.feedback, labeler)
    return replace(cfg, policy=policy, labeler=labeler, report_scenes=report, selection=replace(cfg.selection, kind=kind))


def _check_served(fb: FeedbackConfig, labeler: str) -> None:
    """A server holds the model it was started with, while iterate trains a new policy every
    iteration: sampling through ``openai`` (and self-feedback's conquer through it) would go on
    asking the first policy. ``vllm`` loads each iteration's checkpoint itself, so it may stay."""
    if getattr(fb.sample, "backend", "hf") == "openai":
        raise ConfigError("iterate: feedback.sample.backend openai samples the model the server was started with, not each "
                          "iteration's new policy: use backend hf or vllm for sampling in iterate")
    if labeler == "self" and getattr(fb.conquer, "backend", "hf") == "openai":
        raise ConfigError("iterate: with labeler self each iteration's policy labels its own answers; a server keeps the first "
                          "one: use conquer backend hf or vllm (a separate, fixed labeler may be served)")


# ----------------------------------------------------------------------------- prompts


def _write_prompts(path: Path, prompts: list[Prompt], base: Path) -> Path:
    """``prompts`` to ``path`` (atomic), image paths made absolute: the file lives in another folder than the user's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rows = [replace(p, image=str((base / p.image).resolve())) if p.image else p for p in prompts]
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    tmp.replace(path)
    return path


def _user_base(cfg: IterateConfig) -> Path:
    return Path(cfg.prompts).parent if Path(cfg.prompts).is_file() else Path(cfg.prompts)


def held_out_ids(prompts: list[Prompt], cfg: SelectionConfig) -> set[str]:
    """The prompt ids labeler selection holds out: a seeded draw of ``cfg.holdout`` ids (sorted
    first, so it does not depend on the file's order); at least one prompt must remain."""
    ids = sorted({p.prompt_id for p in prompts})
    if cfg.holdout >= len(ids):
        raise ConfigError(f"selection.holdout {cfg.holdout} leaves no prompts for the feedback ({len(ids)} prompts): lower it "
                          "(labeler selection judges checkpoints on held-out prompts that are never paired)")
    return set(random.Random(cfg.holdout_seed).sample(ids, cfg.holdout))


def _holdout(cfg: IterateConfig) -> tuple[list[Prompt], Path] | None:
    """Labeler selection's held-out prompts (``out/holdout/prompts.jsonl``), or None for other kinds."""
    if cfg.selection.kind != "labeler":
        return None
    folder = Path(cfg.out) / "holdout"
    if cfg.sandbox_prompts > 0:
        path = prompt_source("sandbox", "sandbox_prompts")(folder, cfg.selection.holdout, "val", HOLDOUT_START)
    else:
        allp = list(read_records(Path(cfg.prompts), Prompt))
        held = held_out_ids(allp, cfg.selection)
        path = _write_prompts(folder / "prompts.jsonl", [p for p in allp if p.prompt_id in held], _user_base(cfg))
    return list(read_records(path, Prompt)), path


def _iteration_prompts(cfg: IterateConfig, it: int, folder: Path, held: set[str]) -> Path:
    """The prompts file of iteration ``it`` (1-based); ``held`` ids are never used."""
    if cfg.sandbox_prompts > 0:
        start = SANDBOX_PROMPT_START + (it - 1) * cfg.sandbox_prompts
        return prompt_source("sandbox", "sandbox_prompts")(folder, cfg.sandbox_prompts, "val", start)
    if cfg.prompts_per_iteration <= 0 and not held:
        return Path(cfg.prompts)
    allp = [p for p in read_records(Path(cfg.prompts), Prompt) if p.prompt_id not in held]
    k = min(cfg.prompts_per_iteration, len(allp)) if cfg.prompts_per_iteration > 0 else len(allp)
    chosen = [allp[((it - 1) * k + j) % len(allp)] for j in range(k)]
    return _write_prompts(folder / "prompts.jsonl", chosen, _user_base(cfg))


class IterateError(RuntimeError):
    """An iteration cannot go on (e.g. the feedback produced no pairs)."""


# ----------------------------------------------------------------------------- measuring


def sandbox_report(model_path: str, cfg: IterateConfig) -> dict[str, Any]:
    """The sandbox evaluator's report numbers on ``report_scenes`` test scenes (a sandbox run only)."""
    ev = evaluator("sandbox", "report_scenes")
    with progress_bar("report evaluation", cfg.train.progress) as prog:
        return ev.report(model_path, cfg.report_scenes, cfg.report_pope, cfg.train, prog)


def _start_metrics(cfg: IterateConfig) -> dict[str, float] | None:
    """The run's starting policy's selection metrics (sandbox: the recall floor of every
    iteration, so recall cannot erode step by step), cached in ``out/start_metrics.json``."""
    if cfg.selection.kind != "sandbox":
        return None
    path = Path(cfg.out) / "start_metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    ev = evaluator("sandbox", "selection kind 'sandbox'")
    with progress_bar("starting policy (selection metrics)", cfg.train.progress) as prog:
        m = ev.selection_metrics(cfg.policy, cfg.selection.n_scenes, cfg.selection.seed, cfg.train, prog,
                                 cfg.selection.pope_tolerance is not None)
    write_json(path, m)
    return m


def _select(cfg: IterateConfig, it: int, policy: str, labeler: str, checkpoints: list[str],
            holdout: tuple[list[Prompt], Path] | None, on_stage: Callable[[str], None]) -> dict[str, Any]:
    """``select.py`` for iteration ``it``: the labeler kind judges ``policy`` and every checkpoint on
    the held-out prompts (each stage shows its own progress); the others run under one bar."""
    d = Path(cfg.out) / f"iter-{it}"
    sel = cfg.selection
    if sel.kind == "labeler":
        if holdout is None:
            raise ValueError("labeler selection needs the held-out prompts (iterate() passes them)")
        prompts, ppath = holdout

        def measure(model: str) -> dict[str, Any]:
            name = "current" if model == policy else Path(model).name
            return labeler_metrics(model, prompts, ppath, d / "selection" / name, cfg.feedback, labeler, sel)

        def progress(done: int, total: int, name: str) -> None:
            if done < total:
                on_stage(f"iteration {it}: judging {'the current policy' if done == 0 else name} ({done + 1} of {total}) "
                         f"on {len(prompts)} held-out prompts")

        extra = {"labeler": labeler, "holdout": {"prompts": len(prompts), "file": str(ppath), "seed": sel.holdout_seed}}
        return select_checkpoint(checkpoints, None, sel, d / "selection.json", measure=measure, progress=progress,
                                 current=policy, extra=extra)
    start = _start_metrics(cfg)
    measure = None
    if sel.kind == "sandbox":
        ev = evaluator("sandbox", "selection kind 'sandbox'")
        measure = lambda c: ev.selection_metrics(c, sel.n_scenes, sel.seed, cfg.train, None, sel.pope_tolerance is not None)  # noqa: E731
    with progress_bar("checkpoint selection", cfg.train.progress) as prog:
        return select_checkpoint(checkpoints, start, sel, d / "selection.json", measure=measure, progress=prog, current=policy)


def _labeler_row(m: dict[str, Any] | None) -> dict[str, Any]:
    """The report columns of labeler selection's numbers for one model."""
    return {} if not m else {"hallucination_rate": m["hallucination_rate"], "claims_per_answer": m["claims_per_answer"]}


def _short_name(checkpoint: str) -> str:
    """``step-000025`` -> ``step 25`` (the report's "next policy" column)."""
    head, _, num = checkpoint.partition("-")
    return f"{head} {int(num)}" if num.isdigit() else checkpoint


# ----------------------------------------------------------------------------- the loop


def run_iteration(cfg: IterateConfig, it: int, policy: str, on_stage: Callable[[str], None] = lambda s: None,
                  holdout: tuple[list[Prompt], Path] | None = None) -> dict[str, Any]:
    """One iteration from ``policy`` (module docstring) on a :func:`resolve`\\ d config; returns its ``done.json`` content."""
    d = Path(cfg.out) / f"iter-{it}"
    if (d / "done.json").exists():
        return json.loads((d / "done.json").read_text())
    t0 = time.time()
    held = {p.prompt_id for p in holdout[0]} if holdout is not None and cfg.sandbox_prompts <= 0 else set()
    ppath = _iteration_prompts(cfg, it, d / "prompts", held)
    labeler = policy if cfg.labeler == "self" else cfg.labeler
    fb = replace(cfg.feedback, prompts=str(ppath), sandbox_prompts=0, out=str(d / "feedback"),
                 sample=replace(cfg.feedback.sample, model=policy), conquer=replace(cfg.feedback.conquer, model=labeler))
    on_stage(f"iteration {it}: feedback (policy {policy}, labeler {labeler})")
    summary = feedback(fb)
    n_pairs = summary["pairs"]["pairs_after_balance"]
    if n_pairs == 0:
        raise IterateError(f"iteration {it}: the feedback produced no preference pairs ({d / 'feedback' / 'feedback.json'}); "
                           "a labeler that accepts every claim gives every candidate the same score")
    tr = replace(cfg.train, model=policy, ref_model=policy, pairs=str(d / "feedback" / "pairs"), prompts=str(ppath),
                 out=str(d / "train"), merge_lora=True)
    on_stage(f"iteration {it}: DPO on {n_pairs} pairs")
    train_dpo(tr)
    on_stage(f"iteration {it}: checkpoint selection ({cfg.selection.kind})")
    sel = _select(cfg, it, policy, labeler, [str(p.resolve()) for p in list_checkpoints(tr.out)], holdout, on_stage)
    row: dict[str, Any] = {"iteration": it}
    if cfg.report_scenes > 0:
        on_stage(f"iteration {it}: report evaluation on {cfg.report_scenes} test scenes")
        row.update(sandbox_report(sel["selected"], cfg))
    kept = bool(sel.get("kept_current"))
    if cfg.selection.kind == "labeler":
        row.update(_labeler_row(sel["current"] if kept else sel["scores"][sel["selected"]]))
    row.update({"pairs": n_pairs, "seconds": round(time.time() - t0, 1), "policy": sel["selected"],
                "selected": "kept" if kept else _short_name(Path(sel["selected"]).name)})
    result = {"selected": sel["selected"], "row": row, "feedback": summary.get("stages"), "labeler": labeler}
    write_json(d / "done.json", result)
    return result


def _start_row(cfg: IterateConfig) -> dict[str, Any] | None:
    """Iteration 0 (the starting policy): its sandbox report and/or its labeler-judged numbers
    (measured as the "current" policy of iteration 1's selection)."""
    out = Path(cfg.out)
    row = json.loads((out / "iter-0.json").read_text()) if (out / "iter-0.json").exists() else None
    first = out / "iter-1" / "selection.json"
    if cfg.selection.kind == "labeler" and first.exists():
        current = json.loads(first.read_text()).get("current")
        if current:
            row = {**(row or {"iteration": 0, "pairs": None, "policy": cfg.policy}), **_labeler_row(current)}
    return row


def iterate(cfg: IterateConfig, on_row: Callable[[list[dict]], None] = lambda rows: None,
            on_stage: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Run (or resume) every iteration; ``on_row`` gets the report rows after each one."""
    cfg = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.prompts:  # a stand-in conquer mode on real prompts: refused before any work
        check_conquer_inputs(cfg.feedback.conquer, list(read_records(Path(cfg.prompts), Prompt)))
    # `iterations` may grow between runs (extend a finished run); every other field must match
    config = {k: v for k, v in asdict(cfg).items() if k != "iterations"}
    write_manifest(out, "iterate", config, {"train": cfg.train.seed, "sample": cfg.feedback.sample.seed},
                   [cfg.prompts] if cfg.prompts else [])
    if cfg.report_scenes > 0:
        base = out / "iter-0.json"
        if not base.exists():
            on_stage(f"iteration 0: report evaluation of the starting policy on {cfg.report_scenes} test scenes")
            t0 = time.time()
            write_json(base, {"iteration": 0, **sandbox_report(cfg.policy, cfg), "pairs": None,
                              "seconds": round(time.time() - t0, 1), "policy": cfg.policy})
        on_row([_start_row(cfg)])
    holdout = _holdout(cfg)
    policy, done = cfg.policy, []
    rows: list[dict[str, Any]] = [r for r in [_start_row(cfg)] if r]
    for it in range(1, cfg.iterations + 1):
        res = run_iteration(cfg, it, policy, on_stage, holdout)
        policy = res["selected"]
        done.append(res["row"])
        rows = [r for r in [_start_row(cfg)] if r] + done
        write_report(rows, out)
        on_row(rows)
    return rows
