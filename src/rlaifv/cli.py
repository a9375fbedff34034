"""The ``rlaifv`` command line: one typer app, a thin command per stage.

Every command builds its stage's config from defaults <- ``--config YAML`` <- flags, calls the
stage's Python function, and prints a rich summary. Errors a user can fix are printed as one
clear line (exit code 2), not a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .cli_options import ModelFlags, merge, model_options

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RLAIF-V: trustworthy VLMs from open-source AI feedback.")
sandbox_app = typer.Typer(no_args_is_help=True, help="The synthetic sandbox world and its tiny VLMs.")
app.add_typer(sandbox_app, name="sandbox")
console = Console()


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


_DEBUG = {"on": False}  # set by `rlaifv --debug COMMAND ...`: errors show their traceback


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"rlaifv {version('rlaifv')}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback instead of one line."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the rlaifv version and exit."),
) -> None:
    """Options of every command, given before it: `rlaifv --debug sample ...`."""
    _DEBUG["on"] = debug


@sandbox_app.command("pretrain")
def sandbox_pretrain(
    preset: str = typer.Option("policy", help="policy | labeler: which sandbox model to train."),
    out: Path = typer.Option(..., help="Output checkpoint folder (save_pretrained layout)."),
    steps: Optional[int] = typer.Option(None, help="Instruction-stage steps (default: the preset's budget)."),
    vision_steps: Optional[int] = typer.Option(None, help="Vision-stage steps (default: the preset's)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with PretrainConfig fields."),
    eval_scenes: int = typer.Option(200, help="Held-out scenes to evaluate on after training (0: skip)."),
    eval_every: int = typer.Option(0, help="Also measure descriptions on `val` scenes every N steps (0: off); written to rlaifv_curve.json."),
) -> None:
    """Supervised pre-training of a sandbox VLM on the CPU (fixed step budget and seed)."""
    from .config import load_config
    from .eval.report import write_json
    from .progress import progress_bar
    from .sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox, summary_row
    from .sandbox.pretrain import PretrainConfig, pretrain
    from .sandbox.pretrain import preset as get_preset

    cfg = load_config(PretrainConfig, config, {"steps": steps, "vision_steps": vision_steps, "seed": seed, "log_every": eval_every or None}, base=get_preset(preset))
    curve: list[dict] = []

    def on_log(step: int, model) -> None:  # evaluation only reads the model: training is unchanged
        res = evaluate_sandbox(model, processor_of[0], SandboxEvalConfig(n_scenes=eval_scenes or 200, split="val", pope=False, claims=False))
        curve.append({"step": step, **{f"{m} {k}": res["describe"][m][k] for m in ("sampled", "greedy") for k in ("chair_i", "recall")}})
        console.print(curve[-1])

    processor_of: list = [None]
    with progress_bar(f"pretrain {preset}") as bar:
        model, processor, log = pretrain(cfg, out, progress=bar, on_log=on_log if eval_every else None, on_build=lambda p: processor_of.__setitem__(0, p))
    if curve:
        write_json(Path(out) / "rlaifv_curve.json", curve)
    console.print(f"saved {out} ({log['train_seconds']} s of training)")
    if eval_scenes:
        res = evaluate_sandbox(model, processor, SandboxEvalConfig(n_scenes=eval_scenes))
        write_json(Path(out) / "rlaifv_eval.json", res)
        _metric_table(f"{preset} on {eval_scenes} held-out scenes", [summary_row(preset, res)])


@sandbox_app.command("audit")
def sandbox_audit(
    run: Path = typer.Option(..., help="A finished `rlaifv feedback` run over sandbox prompts."),
    out: Optional[Path] = typer.Option(None, help="Write the numbers as JSON here."),
    prompts: Optional[Path] = typer.Option(None, help="Its prompts file (default RUN/prompts/prompts.jsonl; "
                                           "an iterate run's iter-i/feedback has it in iter-i/prompts/)."),
) -> None:
    """Check a sandbox feedback run against the ground truth: labeler agreement, pair quality."""
    from .eval.report import write_json
    from .sandbox.audit import audit_run

    res = audit_run(run, prompts)
    lab = res["labeler_rejections_vs_truth"]
    row = {k: v for k, v in res.items() if not isinstance(v, dict)} | {"reject precision": lab["precision"], "reject recall": lab["recall"]}
    _metric_table(f"audit of {run}", [{"model": "value", **row}])
    if out:
        write_json(out, res)


@app.command("eval")
@model_options()
def eval_cmd(
    model: list[str] = typer.Option(["sandbox:policy", "sandbox:labeler"], help="Model folder(s) or sandbox:policy / sandbox:labeler."),
    n_scenes: int = typer.Option(200, help="Held-out sandbox scenes."),
    split: str = typer.Option("test", help="Scene split: val | test."),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Optional[Path] = typer.Option(None, help="Write all metrics as JSON here."),
    claim_mode: list[str] = typer.Option(["direct"], help="Claim-question mode(s): direct | describe_then_answer | describe_then_match (the last two: sandbox-only stand-ins)."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Sandbox hallucination metrics: CHAIR_i/CHAIR_s/recall, POPE (3 splits), claim-question F1."""
    from .eval.report import write_json
    from .models.load import load_vlm
    from .sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox, summary_row

    cfg = SandboxEvalConfig(n_scenes=n_scenes, split=split, seed=seed, claim_modes=tuple(claim_mode))
    rows, results = [], {}
    for name in model:
        m, p = load_vlm(name, options=load.options())
        with console.status(f"evaluating {name} on {n_scenes} scenes"):
            results[name] = evaluate_sandbox(m, p, cfg)
        rows.append(summary_row(name, results[name]))
    _metric_table(f"sandbox eval ({n_scenes} {split} scenes, seed {seed})", rows)
    if out:
        write_json(out, results)
        console.print(f"wrote {out}")


@app.command("eval-coco")
def eval_coco(
    answers: Path = typer.Option(..., help="JSONL with {'image_id': ..., 'text': ...} per line."),
    annotations: Path = typer.Option(..., help="COCO instances JSON (images, annotations, categories)."),
    captions: Optional[Path] = typer.Option(None, help="COCO captions JSON: adds objects from reference captions."),
    out: Optional[Path] = typer.Option(None, help="Write metrics (with per-answer details) as JSON."),
) -> None:
    """Object HalBench-style CHAIR on COCO images with rule-based object extraction (no API)."""
    from .eval.coco import CocoGroundTruth, coco_chair
    from .eval.report import print_table, write_json

    gt = CocoGroundTruth.from_annotations(annotations, captions_path=captions)
    rows = {}
    for n, line in enumerate(answers.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rows[rec["image_id"]] = rec["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{answers}:{n}: expected {{'image_id', 'text'}} JSON ({e})") from e
    res = coco_chair(rows, gt)
    cols = ["n_answers", "chair_i", "chair_s", "recall", "avg_length"]
    print_table("COCO CHAIR", [{k: res[k] for k in cols}], cols, console=console)
    if out:
        write_json(out, res)


@app.command("feedback")
@model_options(labeler=True)
def feedback_cmd(
    config: Optional[Path] = typer.Option(None, help="YAML with FeedbackConfig (sections: sample, divide, ask, conquer, pairs)."),
    prompts: Optional[str] = typer.Option(None, help="Prompts: JSONL/parquet of {prompt_id, question, image}, a datasets save_to_disk folder, or an image folder; copied with its images into RUN/prompts/."),
    question: Optional[str] = typer.Option(None, help="Default question for prompts without one (an image folder without a question column)."),
    sandbox_prompts: Optional[int] = typer.Option(None, help="Instead of --prompts: N held-out sandbox describe prompts."),
    out: Optional[str] = typer.Option(None, help="Run folder (one subfolder per stage)."),
    policy: Optional[str] = typer.Option(None, help="Policy model that samples the candidates (required; --sandbox-prompts: sandbox:policy)."),
    labeler: Optional[str] = typer.Option(None, help="Labeler model, or the policy itself for self-feedback (required; --sandbox-prompts: sandbox:labeler)."),
    n: Optional[int] = typer.Option(None, help="Candidates per prompt (default 10)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Sampling budget per candidate (default 512)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    conquer_mode: Optional[str] = typer.Option(None, help="direct | describe_then_answer | describe_then_match (sandbox-only stand-ins)."),
    on_error: Optional[str] = typer.Option(None, help="raise | skip (bad inputs go to each stage's rejects.jsonl)."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry inputs an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished inputs whose content changed (question, image, upstream record); without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Sample -> divide -> ask -> conquer -> pairs, resumable; rerun the same command after a kill."""
    from .config import load_config
    from .stages.feedback import FeedbackConfig, feedback

    _sandbox_extensions()
    over = {"prompts": prompts, "question": question, "sandbox_prompts": sandbox_prompts, "out": out, "on_error": on_error,
            "sample": _drop_none({"model": policy, "n": n, "max_new_tokens": max_new_tokens, "seed": seed}),
            "conquer": _drop_none({"model": labeler, "mode": conquer_mode})}
    cfg = load_config(FeedbackConfig, config, merge(load.feedback(), over))
    summary = feedback(cfg, _resume_options(retry_rejects, redo_changed))
    if "pairs" not in summary:  # not rank 0 of a multi-process launch: rank 0 reports
        return

    st = summary["pairs"]
    row = {**summary["counts"], "pairs": st.get("pairs_after_balance"), **{f"{k} s": v for k, v in summary["stages"].items()}}
    _metric_table(f"feedback -> {cfg.out}", [{"model": "value", **row}])
    _print_mass(summary.get("conquer", {}))
    for stage in ("divide", "ask"):
        _print_stage_summary(summary=summary.get(stage) or {})
    _print_resume(summary.get("rejects_carried", {}), summary.get("redone", {}))
    _print_rejected(summary.get("rejected", {}), cfg.out, cfg.on_error)
    for note in summary.get("warnings", []):
        if "rejected" in note or "truncated" in note:
            console.print(f"[bold red]warning:[/] {note}")
    if st.get("diagnosis"):
        console.print(f"[bold red]0 pairs:[/] {st['diagnosis']}")


def _sandbox_extensions() -> None:
    """Register the sandbox's extensions (stand-in conquer modes, sandbox prompts, sandbox selection
    and report: ``stages/extensions.py``) so that a config may name them; the stages never import
    the sandbox, and nothing of it runs unless a config asks for it."""
    from .sandbox import loop  # noqa: F401


def _resume_options(retry_rejects: bool, redo_changed: bool):
    from .resume import ResumeOptions

    return ResumeOptions(redo_changed=redo_changed, retry_rejects=retry_rejects)


def _print_resume(carried: dict, redone: dict) -> None:
    """Say how many earlier rejects this rerun carried over (per stage) and which changed inputs it redid."""
    if any(carried.values()):
        per = ", ".join(f"{k} {v}" for k, v in carried.items() if v)
        console.print(f"[yellow]rejects carried over from an earlier run:[/] {sum(carried.values())} ({per}); "
                      "--retry-rejects retries them")
    for stage, keys in redone.items():
        console.print(f"{stage}: redid {len(keys)} changed input(s)")


def _stage_done(stage: str, res, what: str, out) -> None:
    """The one-line result of a stage command, with its carried-over rejects."""
    console.print(f"{stage}: {res.n_written if res else 0} {what} written to {out}{_rejected_note(out)}")
    if res is not None:
        _print_resume({stage: res.n_rejects_carried}, {stage: res.redone} if res.redone else {})


def _print_backend(out) -> None:
    """A vllm / openai stage's request counts and warnings (its ``summary.json``: ``backends/stage.py``)."""
    from .backends.stage import read_backend_summary

    info = read_backend_summary(out)
    if not info:
        return
    run, req = info["this_run"], info.get("requests") or {}
    line = (f"{info['stage']} via {info['backend']}: {run.get('requests', 0)} request(s) sent, {run.get('reused', 0)} answered from "
            f"the request log, {run.get('retries', 0)} retries, {run.get('n_fallbacks', 0)} n fallback(s)")
    if req:
        line += f"; {req['requests']} in {Path(out) / 'backend_requests.jsonl'}"
    if info.get("outside_top_k"):
        line += f"; yes/no outside the top-k: {info['outside_top_k']['count']} of {info['outside_top_k']['questions']}"
    console.print(line, markup=False, soft_wrap=True)
    for w in info.get("warnings", []):
        console.print(f"[bold red]warning:[/] {w}", soft_wrap=True)


def _print_stage_summary(out=None, summary: Optional[dict] = None) -> None:
    """A divide / ask stage's answers with 0 claims and LLM fallbacks (its ``summary.json``), if any."""
    from .stages.llm_stage import read_summary, summary_lines

    for line in summary_lines(summary if summary is not None else read_summary(out)):
        console.print(line, markup=False, soft_wrap=True)


def _print_rejected(counts: dict, out, on_error: str) -> None:
    """ "N rejected (see .../rejects.jsonl)" per stage folder of a feedback run (always in skip mode)."""
    from .stages.feedback import STAGE_FOLDERS

    total = sum(counts.values())
    if total or on_error == "skip":
        per = ", ".join(f"{k} {v} ({Path(out) / STAGE_FOLDERS[k]}/rejects.jsonl)" for k, v in counts.items() if v)
        console.print(f"{total} rejected" + (f": {per}" if per else ""))


def _print_mass(report: dict) -> None:
    """The labeler's yes+no mass line, and its warning in red when low."""
    if report.get("questions") and report.get("mode") == "direct":
        console.print(f"labeler yes+no mass: mean {report['mean']}, median {report['median']}, min {report['min']} "
                      f"({report['below_threshold']} of {report['questions']} below {report['threshold']})")
    if report.get("warning"):
        console.print(f"[bold red]warning:[/] {report['warning']}")


def _metric_table(title: str, rows: list[dict]) -> None:
    """Rows keyed by "model" printed with one metric per line (fits a terminal)."""
    from .eval.report import print_table

    metrics = list(dict.fromkeys(k for r in rows for k in r if k != "model"))
    print_table(title, [{"metric": k, **{r["model"]: r.get(k) for r in rows}} for k in metrics], None, console=console)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _backend_overrides(backend: Optional[str], base_url: Optional[str], served_model: Optional[str], api_key_env: Optional[str],
                       max_concurrency: Optional[int], **endpoint) -> dict:
    """Config overrides of a stage's serving backend (``rlaifv/backends/``) from the flags given."""
    ep = _drop_none({"base_url": base_url, "model": served_model, "api_key_env": api_key_env, "max_concurrency": max_concurrency, **endpoint})
    return _drop_none({"backend": backend, "endpoint": ep or None})


def _inputs(path: Path, record_type, on_error: str = "raise", out: Optional[Path] = None, stage: Optional[str] = None,
            what: Optional[str] = None) -> list:
    """A stage command's input records: ``on_error`` checked first (a typo is a one-line error at
    startup); with ``skip`` each malformed line goes to ``out/rejects.jsonl`` (file:line, reason)."""
    from .config import ON_ERROR_CHOICES, check_choice
    from .store import read_inputs

    check_choice("--on-error", on_error, ON_ERROR_CHOICES)
    return read_inputs(path, record_type, on_error, out, stage, what=what)  # type: ignore[arg-type]


def _prompts_file(prompts: Path, on_error: str = "raise", out: Optional[Path] = None, stage: Optional[str] = None):
    from .records import Prompt

    return _inputs(prompts, Prompt, on_error, out, stage, "prompts"), prompts


def _rejected_note(out) -> str:
    """ "; N rejected (see OUT/rejects.jsonl)" when the stage folder holds rejects, else ""."""
    from .store import REJECTS_NAME, rejects_count

    n = rejects_count(out)
    return f"; {n} rejected (see {Path(out) / REJECTS_NAME})" if n else ""


@app.command("sample")
@model_options()
def sample_cmd(
    prompts: Path = typer.Option(..., help="Prompts file (JSONL/parquet of {prompt_id, question, image})."),
    out: Path = typer.Option(..., help="Output folder of Candidate records."),
    config: Optional[Path] = typer.Option(None, help="YAML with SampleConfig fields."),
    model: Optional[str] = typer.Option(None, help="Policy folder or sandbox:policy."),
    n: Optional[int] = typer.Option(None, help="Candidates per prompt (default 10)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 0.7)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Default 512."),
    seed: Optional[int] = typer.Option(None, help="Base seed of the per-candidate seeds."),
    backend: Optional[str] = typer.Option(None, help="hf (this process, default) | vllm (offline engine) | openai (an OpenAI-compatible server)."),
    base_url: Optional[str] = typer.Option(None, help="--backend openai: the server, e.g. http://127.0.0.1:8000/v1 (endpoint.base_url)."),
    served_model: Optional[str] = typer.Option(None, help="--backend openai: model name sent to the server (default: --model)."),
    api_key_env: Optional[str] = typer.Option(None, help="--backend openai: environment variable holding the API key (default OPENAI_API_KEY)."),
    max_concurrency: Optional[int] = typer.Option(None, help="--backend openai: requests in flight (default 8)."),
    use_n: bool = typer.Option(False, "--use-n", help="--backend openai: ask for n choices per request where the server honours n (probed; else one request per seed)."),
    on_error: str = typer.Option("raise", help="raise | skip."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry inputs an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished inputs whose content changed (question, image, upstream record); without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Stage 1: n candidates per prompt with identical decoding (deconfounded sampling)."""
    from .config import load_config
    from .stages.feedback import run_sample
    from .stages.sample import SampleConfig

    cfg = load_config(SampleConfig, config, {"model": model, "n": n, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
                                             **_backend_overrides(backend, base_url, served_model, api_key_env, max_concurrency,
                                                                  use_n=use_n or None), **load.model})
    recs, path = _prompts_file(prompts, on_error, out, "sample")
    res = run_sample(cfg, recs, path, out, on_error,
          resume=_resume_options(retry_rejects, redo_changed))
    _stage_done("sample", res, "candidates", out)
    _print_backend(out)


@app.command("divide")
@model_options()
def divide_cmd(
    candidates: Path = typer.Option(..., help="Folder of Candidate records (from `rlaifv sample`)."),
    prompts: Path = typer.Option(..., help="The prompts file (questions give context to LLM splitting)."),
    out: Path = typer.Option(..., help="Output folder of Claim records."),
    config: Optional[Path] = typer.Option(None, help="YAML with DivideConfig fields."),
    backend: Optional[str] = typer.Option(None, help="rules | llm."),
    llm_model: Optional[str] = typer.Option(None, help="--backend llm: local chat LLM folder (llm.model_path), e.g. from `rlaifv convert-gguf`."),
    on_error: str = typer.Option("raise", help="raise | skip."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry inputs an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished inputs whose content changed (question, image, upstream record); without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Stage 2: split each answer into atomic, self-contained factual claims."""
    from .config import load_config
    from .records import Candidate
    from .stages.divide import DivideConfig
    from .stages.feedback import run_divide

    cfg = load_config(DivideConfig, config, {"backend": backend, "llm": {**load.model, **_drop_none({"model_path": llm_model})}})
    res = run_divide(cfg, _prompts_file(prompts, on_error, out, "divide")[0],
                     _inputs(candidates, Candidate, on_error, out, "divide", "candidates"), out, on_error,
          resume=_resume_options(retry_rejects, redo_changed))
    _stage_done("divide", res, "claims", out)
    _print_stage_summary(out)


@app.command("ask")
@model_options()
def ask_cmd(
    claims: Path = typer.Option(..., help="Folder of Claim records (from `rlaifv divide`)."),
    out: Path = typer.Option(..., help="Output folder of PolarQuestion records."),
    config: Optional[Path] = typer.Option(None, help="YAML with AskConfig fields."),
    backend: Optional[str] = typer.Option(None, help="rules | llm."),
    suffix: Optional[str] = typer.Option(None, help='Appended to each question (default "Please answer yes or no.").'),
    llm_model: Optional[str] = typer.Option(None, help="--backend llm: local chat LLM folder (llm.model_path), e.g. from `rlaifv convert-gguf`."),
    on_error: str = typer.Option("raise", help="raise | skip."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry inputs an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished inputs whose content changed (question, image, upstream record); without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Stage 3: turn each claim into a yes/no question (negation and tense kept)."""
    from .config import load_config
    from .records import Claim
    from .stages.ask import AskConfig
    from .stages.feedback import run_ask

    cfg = load_config(AskConfig, config, {"backend": backend, "suffix": suffix, "llm": {**load.model, **_drop_none({"model_path": llm_model})}})
    res = run_ask(cfg, _inputs(claims, Claim, on_error, out, "ask", "claims"), out, on_error,
          resume=_resume_options(retry_rejects, redo_changed))
    _stage_done("ask", res, "questions", out)
    _print_stage_summary(out)


@app.command("conquer")
@model_options()
def conquer_cmd(
    questions: Path = typer.Option(..., help="Folder of PolarQuestion records (from `rlaifv ask`)."),
    prompts: Path = typer.Option(..., help="The prompts file (the images)."),
    out: Path = typer.Option(..., help="Output folder of ClaimScore records."),
    config: Optional[Path] = typer.Option(None, help="YAML with ConquerConfig fields."),
    model: Optional[str] = typer.Option(None, help="Labeler folder, sandbox:labeler, or the policy (self-feedback)."),
    mode: Optional[str] = typer.Option(None, help="direct | describe_then_answer | describe_then_match (sandbox-only stand-ins)."),
    repetition_penalty: Optional[float] = typer.Option(None, help="Reference-code fidelity switch (e.g. 1.1); off by default."),
    backend: Optional[str] = typer.Option(None, help="hf (this process, default) | vllm (offline engine) | openai (an OpenAI-compatible server)."),
    base_url: Optional[str] = typer.Option(None, help="--backend openai: the server, e.g. http://127.0.0.1:8000/v1 (endpoint.base_url)."),
    served_model: Optional[str] = typer.Option(None, help="--backend openai: model name sent to the server (default: --model)."),
    api_key_env: Optional[str] = typer.Option(None, help="--backend openai: environment variable holding the API key (default OPENAI_API_KEY)."),
    max_concurrency: Optional[int] = typer.Option(None, help="--backend openai: requests in flight (default 8)."),
    top_logprobs: Optional[int] = typer.Option(None, help="--backend openai: top-k log-probs asked for at the first answer token (default 20)."),
    on_error: str = typer.Option("raise", help="raise | skip."),
    retry_rejects: bool = typer.Option(False, "--retry-rejects", help="Retry inputs an earlier run rejected (old rejects kept in rejects.retried-*.jsonl)."),
    redo_changed: bool = typer.Option(False, "--redo-changed", help="Redo finished inputs whose content changed (question, image, upstream record); without it such a rerun is refused."),
    load: ModelFlags = None,  # the model-loading flags (cli_options.model_options)
) -> None:
    """Stage 4: the labeler's p_yes / p_no for every question (shared image prefix)."""
    from .config import load_config
    from .records import PolarQuestion
    from .stages.conquer import ConquerConfig
    from .stages.feedback import conquer_mass, run_conquer

    _sandbox_extensions()
    cfg = load_config(ConquerConfig, config, {"model": model, "mode": mode, "repetition_penalty": repetition_penalty,
                                              **_backend_overrides(backend, base_url, served_model, api_key_env, max_concurrency,
                                                                   top_logprobs=top_logprobs), **load.model})
    recs, path = _prompts_file(prompts, on_error, out, "conquer")
    res = run_conquer(cfg, recs, path, _inputs(questions, PolarQuestion, on_error, out, "conquer", "questions"), out, on_error,
          resume=_resume_options(retry_rejects, redo_changed))
    _stage_done("conquer", res, "scores", out)
    _print_backend(out)
    _print_mass(conquer_mass(cfg, out))


@app.command("pairs")
def pairs_cmd(
    prompts: Path = typer.Option(..., help="The prompts file."),
    candidates: Path = typer.Option(..., help="Folder of Candidate records."),
    claims: Path = typer.Option(..., help="Folder of Claim records."),
    scores: Path = typer.Option(..., help="Folder of ClaimScore records."),
    out: Path = typer.Option(..., help="Output folder of PreferencePair records (+ stats.json)."),
    config: Optional[Path] = typer.Option(None, help="YAML with PairsConfig fields."),
    max_pairs_per_prompt: Optional[int] = typer.Option(None, help="Default 2."),
    seed: Optional[int] = typer.Option(None, help="Seed of the per-prompt pair choice."),
) -> None:
    """Stage 5: score = -(rejected claims); pairs with gap >= 1, ties dropped, length-balanced."""
    from .config import load_config
    from .records import Candidate, Claim, ClaimScore
    from .stages.feedback import run_pairs
    from .stages.pairs import PairsConfig
    from .store import read_records

    cfg = load_config(PairsConfig, config, {"max_pairs_per_prompt": max_pairs_per_prompt, "seed": seed})
    stats = run_pairs(cfg, _prompts_file(prompts)[0], list(read_records(candidates, Candidate)), list(read_records(claims, Claim)),
                      list(read_records(scores, ClaimScore)), out)
    console.print(f"pairs: {stats.get('pairs_after_balance')} pairs written to {out}")
    if stats.get("diagnosis"):
        console.print(f"[bold red]0 pairs:[/] {stats['diagnosis']}")


@app.command("import-rlaifv")
def import_rlaifv_cmd(
    parquet: Path = typer.Option(..., help="A downloaded openbmb/RLAIF-V-Dataset parquet file or folder of shards."),
    out: Path = typer.Option(..., help="Output folder: prompts.jsonl, images/, pairs/."),
) -> None:
    """Import the RLAIF-V-Dataset schema as rlaifv prompts and preference pairs (atomic; a rerun
    on a finished folder does nothing)."""
    from .formats import import_rlaifv

    info, before = import_rlaifv(parquet, out)
    if before:
        console.print(f"nothing to do: {out} already holds the import of {parquet} ({info['prompts']} prompts, {info['pairs']} pairs)")
    else:
        console.print(f"imported {info['prompts']} prompts and {info['pairs']} pairs into {out}")


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., help="Output folder (trl / rlaifv: one parquet file; hf: a datasets save_to_disk folder + README.md card)."),
    run: Optional[Path] = typer.Option(None, help="A feedback run folder: its pairs/ and prompts/prompts.jsonl (each overridable by --pairs / --prompts)."),
    pairs: Optional[Path] = typer.Option(None, help="Pairs folder or file (PreferencePair records; default RUN/pairs)."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts the pairs came from (default RUN/prompts/prompts.jsonl)."),
    fmt: str = typer.Option("trl", "--format", help="trl (TRL vision preference parquet) | rlaifv (openbmb/RLAIF-V-Dataset schema) | hf (datasets DatasetDict with an Image() column + dataset card)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="With --format hf: also push to this Hub dataset repo (datasets' push_to_hub; the saved folder stays)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    max_image_pixels: int = typer.Option(40_000_000, help="Refuse images larger than this (pixels, from the header; 0: no limit)."),
) -> None:
    """Export preference pairs for TRL's DPOTrainer, in the RLAIF-V-Dataset schema, or as a Hub dataset.

    Every image is decoded before it is embedded: a prompt naming a file that is not an image
    (or is above --max-image-pixels) stops the export with an error naming the pair."""
    from .formats_hf import ExportError, export_inputs

    if fmt not in ("trl", "rlaifv", "hf"):
        raise UserError(f"unknown --format {fmt!r}; expected trl, rlaifv or hf")
    if push_to_hub and fmt != "hf":
        raise UserError("--push-to-hub needs --format hf")
    import datasets

    datasets.disable_progress_bars()
    try:
        pair_list, prompt_map, base = export_inputs(run, pairs, prompts)
        if fmt == "hf":
            from .formats_hf import push_to_hub as push, to_hf

            ds = to_hf(pair_list, prompt_map, base, out, run=run, max_pixels=max_image_pixels, run_pairs=pairs is None)["train"]
        else:
            from .formats import to_rlaifv_dataset, to_trl

            write = to_trl if fmt == "trl" else to_rlaifv_dataset
            ds = write(pair_list, prompt_map, base, out, max_pixels=max_image_pixels)
        console.print(f"wrote {len(ds)} pairs to {out}")
        if push_to_hub:
            push(out, push_to_hub, private=private)
            console.print(f"pushed {out} to the hub dataset {push_to_hub}")
    except ExportError as e:
        raise UserError(str(e)) from e


def _quiet_libraries() -> None:
    """Our rich progress bars are the output: silence transformers' per-load tqdm bars (and the
    hub's; transformers reads this variable when it is imported, so nothing is imported here:
    `rlaifv --help` stays fast) and the deprecation notices the libraries raise about each other."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types a user can fix. Looked up in ``sys.modules`` when an error arrives: a
    class whose module was never imported cannot have been raised, and importing them all up
    front (``models.load`` imports torch) would make every command, ``--help`` included, slow."""
    import sys

    found: list[type[BaseException]] = [UserError, FileNotFoundError]
    for module, name in (("rlaifv.config", "ConfigError"), ("rlaifv.images", "ImageError"), ("rlaifv.models.load", "ModelLoadError"),
                         ("rlaifv.records", "RecordError"), ("rlaifv.runner", "StageInputError"), ("rlaifv.store", "StoreError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 2; ``--debug`` shows the
    traceback instead. Errors that are not the user's (bugs) always show their traceback."""
    _quiet_libraries()
    try:
        app()
    except Exception as e:
        if _DEBUG["on"]:
            raise
        if isinstance(e, _user_error_types()):
            print_error(e)
            raise SystemExit(2) from e
        if isinstance(e, OSError):  # not a bad input (nothing was rejected for it): one line, exit 1, rerun to resume
            print_error(OSError(f"{e} (an I/O error, not a bad input: nothing was rejected for it; rerun the same command to resume)"))
            raise SystemExit(1) from e
        raise


def print_error(e: BaseException) -> None:
    """One line on the console, however long the message (no wrapping, no markup read into it)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(' '.join(str(e).split()))}", soft_wrap=True)


from . import cli_loop  # noqa: E402,F401  (registers train, iterate, best-of-n, demo on `app`)
from . import cli_labeler  # noqa: E402,F401  (registers `sandbox finetune-labeler`)
from . import cli_convert  # noqa: E402,F401  (registers `convert-gguf`)
from . import cli_report  # noqa: E402,F401  (registers `report`)

if __name__ == "__main__":  # `python -m rlaifv.cli`: run the package module, whose app has every command
    from rlaifv.cli import main as _main

    _main()
