"""``rlaifv train``, ``iterate``, ``best-of-n`` and ``demo``: training, the loop and inference-time scaling
(registered on the one ``rlaifv`` app of ``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import UserError, _drop_none, _metric_table, _resume_options, app, console
from .cli_options import ModelFlags, merge, model_options


@app.command("train")
@model_options()
def train_cmd(
    config: Optional[Path] = typer.Option(None, help="YAML with DPOConfig fields."),
    pairs: Optional[str] = typer.Option(None, help="Pairs folder/file (e.g. a feedback run's pairs/)."),
    prompts: Optional[str] = typer.Option(None, help="The prompts file the pairs came from (images)."),
    model: Optional[str] = typer.Option(None, help="Starting policy: a model folder (or sandbox:policy); required."),
    ref_model: Optional[str] = typer.Option(None, help="Reference model (default: the starting policy)."),
    out: Optional[str] = typer.Option(None, help="Run folder: checkpoints/, resume/, log.jsonl, train.json."),
    finetune: Optional[str] = typer.Option(None, help="lora (default) | full."),
    beta: Optional[float] = typer.Option(None, help="DPO beta (default 0.1)."),
    nll_weight: Optional[float] = typer.Option(None, help="NLL weight on the chosen answer (default 0)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    epochs: Optional[float] = typer.Option(None, help="Epochs (fractions allowed)."),
    batch_size: Optional[int] = typer.Option(None, help="Pairs per optimizer step (all processes)."),
    seed: Optional[int] = typer.Option(None, help="Seed (data order, LoRA init)."),
    on_error: Optional[str] = typer.Option(None, help="raise | skip (bad pairs go to rejects.jsonl)."),
    mixed_precision: Optional[str] = typer.Option(None, help="no (default) | bf16 | fp16: forward under autocast (bf16 also on the CPU)."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward (less memory)."),
    max_steps: Optional[int] = typer.Option(None, help="Exactly this many optimizer steps (overrides --epochs)."),
    save_total_limit: Optional[int] = typer.Option(None, help="Keep only the last N step-N/ checkpoints (default: all)."),
    report_to: Optional[str] = typer.Option(None, help="none (default) | tensorboard | wandb | all (accelerate trackers)."),
    logging_dir: Optional[str] = typer.Option(None, help="Tracker folder (default: <out>/logs)."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """DPO on preference pairs with cached reference log-probs; rerun the same command to resume."""
    from .config import load_config
    from .training.dpo import DPOConfig, train_dpo

    over = {"pairs": pairs, "prompts": prompts, "model": model, "ref_model": ref_model, "out": out, "finetune": finetune,
            "beta": beta, "nll_weight": nll_weight, "lr": lr, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "on_error": on_error, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
            "max_steps": max_steps, "save_total_limit": save_total_limit, "report_to": report_to, "logging_dir": logging_dir,
            **load.model}
    cfg = load_config(DPOConfig, config, over)
    summary = train_dpo(cfg)
    last = summary.get("last", {})
    _metric_table(f"train -> {cfg.out}", [{"model": "value", "pairs": summary["pairs"], "steps": summary["steps"],
                                            "loss": last.get("loss"), "reward acc": last.get("acc"),
                                            "seconds": summary["seconds"], "checkpoints": len(summary["checkpoints"]),
                                            "rejected": summary.get("rejected", 0)}])
    _print_rejected_line(summary.get("rejected", 0), Path(cfg.out), cfg.on_error)


def _print_rejected_line(n: int, folder: Path, on_error: str) -> None:
    """ "N rejected (see FOLDER/rejects.jsonl)": always in skip mode, and whenever N > 0."""
    if n or on_error == "skip":
        console.print(f"{n} rejected (see {folder / 'rejects.jsonl'})")


def _comma_list(value: Optional[str], flag: str, kind: type = str) -> Optional[list]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (None stays None: the flag was not given)."""
    if value is None:
        return None
    try:
        return [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise UserError(f"{flag}: expected comma-separated {kind.__name__} values, got {value!r}") from e


@app.command("best-of-n")
@model_options(labeler=True)
def best_of_n_cmd(
    config: Optional[Path] = typer.Option(None, help="YAML with BestOfNConfig (sections: sample, divide, ask, conquer, sweep)."),
    prompts: Optional[str] = typer.Option(None, help="Prompts file (JSONL/parquet of {prompt_id, question, image})."),
    sandbox_prompts: Optional[int] = typer.Option(None, help="Instead of --prompts: N held-out sandbox describe prompts (test scenes)."),
    out: Optional[str] = typer.Option(None, help="Run folder: results/ (one record per prompt), summary.json; sweep: seed-S/, sweep.{json,md,png}."),
    policy: Optional[str] = typer.Option(None, help="Policy that samples the N candidates (required; --sandbox-prompts: sandbox:policy)."),
    aligned: Optional[str] = typer.Option(None, help="DPO-aligned reward model: checkpoint or LoRA adapter folder (default: the policy)."),
    reference: Optional[str] = typer.Option(None, help="Reference model of the reward (default: the aligned LoRA adapter switched off)."),
    labeler: Optional[str] = typer.Option(None, help="Labeler of the `labeler` scorer (required by it; --sandbox-prompts: sandbox:labeler)."),
    scorer: Optional[str] = typer.Option(None, help="rlaifv-reward (default) | dpo-reward | reward-min | reward-last | labeler | perplexity."),
    also_score: Optional[str] = typer.Option(None, help="Further scorers to compute and record, comma-separated."),
    n: Optional[int] = typer.Option(None, help="Candidates per prompt, N (default 8)."),
    beta: Optional[float] = typer.Option(None, help="DPO beta of the reward (default 0.1; scales, never reorders)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 0.7)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Sampling budget per candidate (default 512)."),
    seed: Optional[int] = typer.Option(None, help="Base seed of the per-candidate seeds."),
    conquer_mode: Optional[str] = typer.Option(None, help="Labeler scorer: direct (default) | describe_then_match (sandbox-only stand-in)."),
    on_error: Optional[str] = typer.Option(None, help="raise | skip (a bad prompt goes to rejects.jsonl)."),
    sweep: bool = typer.Option(False, "--sweep", help="Sandbox measurement: sample max(N) once per seed, CHAIR/recall vs N per scorer."),
    ns: Optional[str] = typer.Option(None, help="Sweep: N values, comma-separated (default 1,2,4,8,16,32)."),
    seeds: Optional[str] = typer.Option(None, help="Sweep: sampling seeds, comma-separated (default 0,1,2)."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry prompts an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished prompts whose question or image changed; without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Best-of-N: sample N answers per prompt, keep the best under the RLAIF-V reward (or another scorer)."""
    from .cli import _sandbox_extensions
    from .config import load_config
    from .stages.bestofn import BestOfNConfig, best_of_n_run

    _sandbox_extensions()
    over = {"prompts": prompts, "sandbox_prompts": sandbox_prompts, "out": out, "aligned": aligned, "reference": reference,
            "scorer": scorer, "also_score": _comma_list(also_score, "--also-score"), "beta": beta, "on_error": on_error,
            "sample": _drop_none({"model": policy, "n": n, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}),
            "conquer": _drop_none({"model": labeler, "mode": conquer_mode}),
            "sweep": _drop_none({"ns": _comma_list(ns, "--ns", int), "seeds": _comma_list(seeds, "--seeds", int)})}
    cfg = load_config(BestOfNConfig, config, merge(load.feedback(), over))
    if sweep:
        from .sandbox.bestofn_sweep import run_sweep

        report = run_sweep(cfg)
        if report:
            console.print((Path(cfg.out) / "sweep.md").read_text())
            console.print(f"wrote {cfg.out}/sweep.json, sweep.md, sweep.png ({report['prompts']} prompts, seeds {report['seeds']})")
        return
    summary = best_of_n_run(cfg, _resume_options(retry_rejects, redo_changed))
    if summary:
        _metric_table(f"best-of-{cfg.sample.n} ({cfg.scorer}) -> {cfg.out}", [{"model": "value", **summary}])
        _print_rejected_line(summary.get("rejected", 0), Path(cfg.out) / "results", cfg.on_error)


@app.command("iterate")
@model_options(labeler=True)
def iterate_cmd(
    config: Optional[Path] = typer.Option(None, help="YAML with IterateConfig (top-level fields + feedback, train, selection sections)."),
    preset: Optional[str] = typer.Option(None, help="Start from a preset: sandbox-direct (the demo's recipe: the method's direct "
                                         "conquer) | sandbox (the describe_then_match stand-in, an upper bound)."),
    out: Optional[str] = typer.Option(None, help="Run folder (iter-1/, iter-2/, ..., report.md/json/png)."),
    iterations: Optional[int] = typer.Option(None, help="Number of iterations (default 4)."),
    policy: Optional[str] = typer.Option(None, help="Starting policy folder (required; a sandbox run: sandbox:policy)."),
    labeler: Optional[str] = typer.Option(None, help="Labeler model, or 'self' (the current policy labels its own answers); required (a sandbox run: sandbox:labeler)."),
    prompts: Optional[str] = typer.Option(None, help="Prompts file (JSONL/parquet)."),
    sandbox_prompts: Optional[int] = typer.Option(None, help="Instead of --prompts: N fresh sandbox prompts per iteration."),
    selection: Optional[str] = typer.Option(None, help="Checkpoint selection: labeler (default on your prompts: labeler-judged hallucination rate on held-out prompts) | command | last | sandbox (sandbox runs)."),
    holdout: Optional[int] = typer.Option(None, help="Labeler selection: prompts held out of the feedback to judge checkpoints on (default 50)."),
    seed: Optional[int] = typer.Option(None, help="Seed of sampling and training."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Iterative alignment: k x (sample -> divide -> ask -> conquer -> pairs -> DPO -> select); resumable."""
    from .config import load_config
    from .sandbox.loop import PRESETS  # also registers the sandbox's extensions (used only by a sandbox run)
    from .stages.iterate import IterateConfig

    if preset not in (None, *PRESETS):
        raise UserError(f"--preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    over = {"out": out, "iterations": iterations, "policy": policy, "labeler": labeler, "prompts": prompts,
            "sandbox_prompts": sandbox_prompts, "selection": _drop_none({"kind": selection, "holdout": holdout})}
    if seed is not None:
        over.update(feedback={"sample": {"seed": seed}}, train={"seed": seed})
        over["selection"]["seed"] = seed
    over = merge({"feedback": load.feedback(), "train": load.model}, over)
    cfg = load_config(IterateConfig, config, over, base=PRESETS[preset]() if preset else None)
    _run_iterate(cfg)


def _run_iterate(cfg) -> list[dict]:
    """Run ``iterate`` printing the per-iteration table after each iteration."""
    from .eval.iterations import columns
    from .eval.report import print_table
    from .stages.iterate import iterate

    short = {"iteration": "iter", "avg len (words)": "words", "wall s": "s", "next policy": "next",
             "halluc. rate (labeler)": "halluc", "claims/answer": "claims"}  # fits 80 columns
    compact = {"avg_length": lambda v: f"{v:.1f}", "seconds": lambda v: f"{v:.0f}", "selected": lambda v: str(v).replace("step ", "#")}

    def cell(r: dict, k: str):
        v = r.get(k)
        return compact[k](v) if k in compact and v is not None else v

    def show(rows: list[dict]) -> None:
        print_table(f"iterations -> {cfg.out}", [{short.get(t, t): cell(r, k) for k, t in columns(rows)} for r in rows], console=console)

    rows = iterate(cfg, on_row=show, on_stage=lambda s: console.print(f"[bold cyan]{s}[/bold cyan]"))
    if rows:
        console.print(f"report: {Path(cfg.out) / 'report.md'}, {Path(cfg.out) / 'report.json'}, {Path(cfg.out) / 'report.png'}")
    return rows


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its run (resumable)."),
    iterations: int = typer.Option(4, help="Iterations of the loop."),
    seed: int = typer.Option(0, help="Seed of sampling, training and selection."),
) -> None:
    """The sandbox demo: the shipped tiny policy aligned by the shipped labeler (direct conquer), 4 iterations of
    sample -> divide -> ask -> conquer -> pairs -> DPO -> checkpoint selection, measured on
    held-out test scenes after each iteration (table, report.md/json, report.png)."""
    import time

    from .sandbox.loop import sandbox_direct_preset

    t0 = time.time()
    cfg = sandbox_direct_preset(str(out))
    cfg.iterations = iterations
    cfg.feedback.sample.seed = cfg.train.seed = cfg.selection.seed = seed
    console.print("[bold]rlaifv demo[/bold]: sandbox:policy-direct aligned by sandbox:labeler-direct, which judges each claim "
                  "by p_yes / p_no of its first answer token (the method's direct conquer)")
    rows = _run_iterate(cfg)
    if len(rows) > 1 and rows[0].get("chair_i"):
        rel = 1 - rows[-1]["chair_i"] / rows[0]["chair_i"]
        console.print(f"CHAIR_i {rows[0]['chair_i']:.3f} -> {rows[-1]['chair_i']:.3f} ({-rel:+.0%}), recall "
                      f"{rows[0]['recall']:.3f} -> {rows[-1]['recall']:.3f}; demo wall time {time.time() - t0:.0f} s")
