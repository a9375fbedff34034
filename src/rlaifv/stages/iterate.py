"""``rlaifv iterate``: the paper's iterative alignment (RLAIF-V Sec. 3.2, "iterative feedback learning").

Each iteration i = 1..k, under ``out/iter-i/``:

1. ``prompts/``: fresh prompts (sandbox: ``sandbox_prompts`` new val scenes per iteration, from
   scene index 1,000,000 on, disjoint from the selection and report scenes; user prompts: all,
   or a disjoint slice of ``prompts_per_iteration``);
2. ``feedback/``: sample with the current policy -> divide -> ask -> conquer with the labeler
   (a separate model, or ``labeler='self'``: the current policy labels its own answers) -> pairs;
3. ``train/``: DPO from the current policy with the current policy as reference (reference
   log-probs cached once), checkpoints every 1/``checkpoints_per_epoch`` epoch;
4. ``selection.json``: the best checkpoint (``select.py``) becomes the next policy and reference;
5. a report row: sandbox metrics of the selected policy on ``report_scenes`` test scenes
   (CHAIR_s, CHAIR_i, recall, POPE F1, length), pairs, wall time -> ``out/report.{md,json,png}``.

``iter-i/done.json`` marks a finished iteration; every step inside is resumable on its own, so
rerunning the same command after a kill continues where it stopped. One YAML (``IterateConfig``:
top-level fields plus ``feedback``, ``train`` and ``selection`` sections) describes the whole run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..eval.iterations import write_report
from ..eval.report import write_json
from ..progress import progress_bar
from ..records import Prompt
from ..store import read_records, write_manifest
from ..training.dpo import DPOConfig, list_checkpoints, train_dpo
from .feedback import FeedbackConfig, feedback
from .select import SelectionConfig, sandbox_metrics, select_checkpoint

SANDBOX_PROMPT_START = 1_000_000


@dataclass
class IterateConfig:
    """One config for a whole iterative run (YAML sections: feedback, train, selection)."""

    out: str = "runs/iterate"
    iterations: int = 4
    policy: str = "sandbox:policy"  # the starting policy (and first reference)
    labeler: str = "sandbox:labeler"  # labeler model, or "self": each iteration's policy labels its own answers
    prompts: str = ""  # user prompts file (JSONL/parquet of Prompt records)
    prompts_per_iteration: int = 0  # user prompts: >0 uses a disjoint slice per iteration (wraps around)
    sandbox_prompts: int = 0  # >0: this many fresh sandbox describe prompts per iteration
    report_scenes: int = 200  # sandbox: test scenes for the per-iteration report (0: no report evaluation)
    report_pope: bool = True  # sandbox report: also POPE (3 splits)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    train: DPOConfig = field(default_factory=DPOConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


def _iteration_prompts(cfg: IterateConfig, it: int, folder: Path) -> Path:
    """The prompts file of iteration ``it`` (1-based)."""
    if cfg.sandbox_prompts > 0:
        from ..sandbox.prompts import write_sandbox_prompts

        start = SANDBOX_PROMPT_START + (it - 1) * cfg.sandbox_prompts
        return write_sandbox_prompts(folder, cfg.sandbox_prompts, split="val", start=start)
    if not cfg.prompts:
        raise ValueError("iterate needs `prompts` (a prompts file) or `sandbox_prompts` > 0")
    if cfg.prompts_per_iteration <= 0:
        return Path(cfg.prompts)
    allp = list(read_records(Path(cfg.prompts), Prompt))
    k = min(cfg.prompts_per_iteration, len(allp))
    chosen = [allp[((it - 1) * k + j) % len(allp)] for j in range(k)]
    base = Path(cfg.prompts).parent if Path(cfg.prompts).is_file() else Path(cfg.prompts)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    # image paths made absolute: the slice lives in another folder than the user's file
    rows = [replace(p, image=str((base / p.image).resolve())) if p.image else p for p in chosen]
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    tmp.replace(path)
    return path


class IterateError(RuntimeError):
    """An iteration cannot go on (e.g. the feedback produced no pairs)."""


def sandbox_report(model_path: str, cfg: IterateConfig) -> dict[str, Any]:
    """Sampled-description CHAIR / recall / length and mean POPE F1 on ``report_scenes`` test scenes."""
    with progress_bar("report evaluation", cfg.train.progress) as prog:
        return _sandbox_report(model_path, cfg, prog)


def _sandbox_report(model_path: str, cfg: IterateConfig, prog) -> dict[str, Any]:
    from ..models.load import load_vlm
    from ..sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox

    model, processor = load_vlm(model_path, cfg.train.device, cfg.train.dtype)
    ev = SandboxEvalConfig(n_scenes=cfg.report_scenes, split="test", pope=cfg.report_pope, claims=False, greedy=False)
    res = evaluate_sandbox(model, processor, ev, progress=prog)
    s = res["describe"]["sampled"]
    row = {"chair_s": s["chair_s"], "chair_i": s["chair_i"], "recall": s["recall"], "avg_length": s["avg_length"]}
    if "pope" in res:
        row["pope_f1"] = sum(v["f1"] for v in res["pope"].values()) / len(res["pope"])
    return row


def _selection(cfg: IterateConfig) -> SelectionConfig:
    if cfg.selection.kind == "sandbox" and cfg.sandbox_prompts <= 0:
        raise ValueError("selection kind 'sandbox' needs a sandbox run (sandbox_prompts > 0); use 'command' or 'last'")
    return cfg.selection


def _start_metrics(cfg: IterateConfig) -> dict[str, float] | None:
    """The run's starting policy's selection metrics (sandbox: the recall floor of every
    iteration, so recall cannot erode step by step), cached in ``out/start_metrics.json``."""
    if cfg.selection.kind != "sandbox":
        return None
    path = Path(cfg.out) / "start_metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    with progress_bar("starting policy (selection metrics)", cfg.train.progress) as prog:
        m = sandbox_metrics(cfg.policy, cfg.selection.n_scenes, cfg.selection.seed, cfg.train.device, cfg.train.dtype, prog,
                            pope=cfg.selection.pope_tolerance is not None)
    write_json(path, m)
    return m


def _short_name(checkpoint: str) -> str:
    """``step-000025`` -> ``step 25`` (the report's "next policy" column)."""
    head, _, num = checkpoint.partition("-")
    return f"{head} {int(num)}" if num.isdigit() else checkpoint


def run_iteration(cfg: IterateConfig, it: int, policy: str, on_stage: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """One iteration from ``policy`` (module docstring); returns its ``done.json`` content."""
    d = Path(cfg.out) / f"iter-{it}"
    if (d / "done.json").exists():
        return json.loads((d / "done.json").read_text())
    t0 = time.time()
    ppath = _iteration_prompts(cfg, it, d / "prompts")
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
    start = _start_metrics(cfg)
    with progress_bar("checkpoint selection", cfg.train.progress) as prog:
        sel = select_checkpoint([str(p.resolve()) for p in list_checkpoints(tr.out)], start, cfg.selection,
                                d / "selection.json", progress=prog, current=policy)
    row: dict[str, Any] = {"iteration": it}
    if cfg.report_scenes > 0:
        on_stage(f"iteration {it}: report evaluation on {cfg.report_scenes} test scenes")
        row.update(sandbox_report(sel["selected"], cfg))
    kept = bool(sel.get("kept_current"))
    row.update({"pairs": n_pairs, "seconds": round(time.time() - t0, 1), "policy": sel["selected"],
                "selected": "kept" if kept else _short_name(Path(sel["selected"]).name)})
    result = {"selected": sel["selected"], "row": row, "feedback": summary.get("stages"), "labeler": labeler}
    write_json(d / "done.json", result)
    return result


def iterate(cfg: IterateConfig, on_row: Callable[[list[dict]], None] = lambda rows: None,
            on_stage: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Run (or resume) every iteration; ``on_row`` gets the report rows after each one."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _selection(cfg)
    # `iterations` may grow between runs (extend a finished run); every other field must match
    config = {k: v for k, v in asdict(cfg).items() if k != "iterations"}
    write_manifest(out, "iterate", config, {"train": cfg.train.seed, "sample": cfg.feedback.sample.seed},
                   [cfg.prompts] if cfg.prompts else [])
    rows: list[dict[str, Any]] = []
    if cfg.report_scenes > 0:
        base = out / "iter-0.json"
        if not base.exists():
            on_stage(f"iteration 0: report evaluation of the starting policy on {cfg.report_scenes} test scenes")
            t0 = time.time()
            write_json(base, {"iteration": 0, **sandbox_report(cfg.policy, cfg), "pairs": None,
                              "seconds": round(time.time() - t0, 1), "policy": cfg.policy})
        rows.append(json.loads(base.read_text()))
        on_row(rows)
    policy = cfg.policy
    for it in range(1, cfg.iterations + 1):
        res = run_iteration(cfg, it, policy, on_stage)
        policy = res["selected"]
        rows.append(res["row"])
        write_report(rows, out)
        on_row(rows)
    return rows


def sandbox_preset(out: str = "runs/iterate") -> IterateConfig:
    """The sandbox recipe ``rlaifv demo`` runs (sandbox-notes.md: DPO + NLL 1, lr 1e-4, batch 16).

    The labeler judges claims with ``describe_then_match``, the sandbox-only stand-in (the tiny
    labeler's direct yes/no is at chance; RESULTS.md). Pairs: no length balancing, which in the
    sandbox drops most object-hallucination pairs (a hallucination is an extra sentence), and
    ``keep_support`` instead (no pair whose chosen answer wins by stating fewer accepted claims);
    measured side by side in RESULTS.md. Selection guards: recall within 0.03 and POPE F1
    within 0.10 of the starting policy's, else the current policy is kept (RESULTS.md, 3.3).
    """
    cfg = IterateConfig(out=out, sandbox_prompts=200, report_scenes=200)
    cfg.feedback.sample.max_new_tokens = 128
    cfg.feedback.conquer.mode = "describe_then_match"
    cfg.feedback.on_error = "skip"
    cfg.feedback.pairs.length_balance = False
    cfg.feedback.pairs.keep_support = True
    cfg.train = replace(cfg.train, finetune="full", lr=1e-4, epochs=3.0, batch_size=16, nll_weight=1.0, warmup_ratio=0.1,
                        checkpoints_per_epoch=1)
    cfg.selection.n_scenes = 100
    cfg.selection.pope_tolerance = 0.10
    cfg.selection.keep_current = True
    return cfg
