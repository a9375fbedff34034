"""``rlaifv feedback``: stages 1-5 (sample, divide, ask, conquer, pairs) with one config.

Each stage writes its own inspectable, resumable folder under ``out``::

    out/candidates/  out/claims/  out/questions/  out/scores/  out/pairs/  out/feedback.json

Rerunning the same command after a kill continues where it stopped (see ``runner.py``).

Several processes (``accelerate launch`` / ``torchrun``; RANK and WORLD_SIZE set): each
per-record stage (sample, divide, ask, conquer) runs every process's share of the inputs into
``out/<stage>/rank-{r}/``, all processes wait at a barrier, then rank 0 merges the rank folders
into ``out/<stage>/`` in input order -- the same records, in the same order, that one process
writes -- and removes them; the others wait for the merge before reading it for the next stage.
Pairs run on rank 0 only. A rerun skips a merged stage and continues unmerged rank folders.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ON_ERROR_CHOICES, ConfigError, check_choice
from ..images import load_image
from ..models.load import load_vlm
from ..records import Candidate, Claim, ClaimScore, PolarQuestion, PreferencePair, Prompt, Record
from ..resume import (FINGERPRINTS_NAME, ResumeOptions, check_resume, content_fingerprint, merge_fingerprints, prompt_fingerprint, record_fingerprint,
                      set_rejects_aside)
from ..runner import PROGRESS_NAME, barrier, local_device, rank_and_world, read_progress, run_stage
from ..store import (LOCK_NAME, MANIFEST_NAME, REJECTS_NAME, RecordStore, RejectsFile, StoreError, _fsync_dir,
                     _list_shards, merge_stores, read_inputs, read_manifest, read_records, rejects_count,
                     write_manifest)
from .ask import AskConfig, ask_results
from ..backends.base import manifest_view
from ..eval.report import write_json
from ..backends.stage import StageBackend, read_backend_summary
from .conquer import ConquerConfig, check_conquer_inputs, conquer, mass_summary, score_via
from .divide import DivideConfig, divide
from .llm_stage import LLMStageRun, finish_stage, manifest_config, read_summary, summary_lines
from .pairs import PairsConfig, holistic_question, make_pairs, score_candidates, score_holistic
from .sample import SampleConfig, sample, sample_via


@dataclass
class FeedbackConfig:
    """One config for the whole feedback engine (YAML sections = stage configs)."""

    prompts: str = ""  # prompts: JSONL/parquet, a datasets save_to_disk folder or an image folder (inputs.py); empty: use `sandbox_prompts`
    question: str = ""  # default question for prompt sources without a question column (an image folder)
    copy_images: bool = True  # copy the images into out/prompts/images/ (the run folder travels); false: refer to them by absolute path
    sandbox_prompts: int = 0  # >0: generate this many sandbox describe prompts into out/prompts
    out: str = "runs/feedback"
    on_error: str = "raise"  # raise | skip (bad inputs go to each stage's rejects.jsonl)
    sample: SampleConfig = field(default_factory=SampleConfig)
    divide: DivideConfig = field(default_factory=DivideConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    conquer: ConquerConfig = field(default_factory=ConquerConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)

    def __post_init__(self) -> None:
        check_choice("on_error", self.on_error, ON_ERROR_CHOICES)


def prompts_file(prompts: str, sandbox_prompts: int, out: str | Path, split: str = "val") -> Path:
    """The prompts file: ``prompts`` itself, or ``sandbox_prompts`` held-out sandbox scenes written
    (by rank 0; the other processes wait) to ``out/prompts/prompts.jsonl``."""
    if prompts:
        return Path(prompts)
    if sandbox_prompts > 0:
        from .extensions import prompt_source

        write = prompt_source("sandbox", "sandbox_prompts")  # registered by rlaifv.sandbox (the CLI imports it)
        path = Path(out) / "prompts" / "prompts.jsonl"
        if rank_and_world()[0] == 0:
            path = write(path.parent, sandbox_prompts, split, 0)
        barrier()
        return path
    raise ConfigError("no prompts: give `prompts` (a JSONL/parquet file) or `sandbox_prompts` > 0")


def with_models(cfg: FeedbackConfig) -> FeedbackConfig:
    """A sandbox run (``sandbox_prompts``, no ``prompts``) defaults to the shipped sandbox:policy /
    sandbox:labeler; any other run must name both models (ConfigError naming the flags)."""
    sample, judge = cfg.sample, cfg.conquer
    if cfg.sandbox_prompts > 0 and not cfg.prompts:
        sample = replace(sample, model=sample.model or "sandbox:policy")
        judge = replace(judge, model=judge.model or "sandbox:labeler")
    if not sample.model:
        raise ConfigError("feedback: give --policy (or sample.model in the config): the model that samples the answers")
    if not judge.model:
        raise ConfigError("feedback: give --labeler (or conquer.model in the config): the labeler, or the policy itself for self-feedback")
    return replace(cfg, sample=sample, conquer=judge)


def _prompts(cfg: FeedbackConfig) -> tuple[list[Prompt], Path]:
    """The prompts, from the run's own copy ``out/prompts/prompts.jsonl`` (images in
    ``out/prompts/images/``: ``inputs.copy_into_run``, so the run folder travels); with
    ``on_error: skip`` malformed lines go to the sample stage's rejects (rank 0 writes them)."""
    from ..inputs import copy_into_run

    path = prompts_file(cfg.prompts, cfg.sandbox_prompts, cfg.out)
    rejects_dir = Path(cfg.out) / "candidates" if rank_and_world()[0] == 0 else None
    prompts = read_inputs(path, Prompt, cfg.on_error, rejects_dir, "sample", what="prompts", question=cfg.question or None)  # type: ignore[arg-type]
    return copy_into_run(prompts, path, cfg.out, cfg.copy_images)


#: stage -> its folder under ``out`` (the folders whose rejects.jsonl the summary counts)
STAGE_FOLDERS = {"sample": "candidates", "divide": "claims", "ask": "questions", "conquer": "scores",
                 "conquer_holistic": "holistic_scores"}


def rejected_counts(out: Path) -> dict[str, int]:
    """Entries in each stage folder's rejects.jsonl (bad input lines and rejected records)."""
    return {stage: rejects_count(out / folder) for stage, folder in STAGE_FOLDERS.items() if (out / folder).exists()}


def _base_dir(path: Path) -> Path:
    return path.parent if path.is_file() else path


def _load(name: str, how):
    """The model loaded as ``how`` (a stage config's LoadOptions fields) on this process's device
    (``cuda`` -> ``cuda:{LOCAL_RANK}`` with several processes; a device map places it itself)."""
    device = local_device(how.device)
    if device.startswith("cuda:") and how.device_map is None:
        import torch

        torch.cuda.set_device(device)
    return load_vlm(name, options=how)


def _rank_dirs(out: Path) -> list[Path]:
    return sorted((p for p in out.glob("rank-*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))


def _check_world(out: Path, world: int) -> None:
    """Rank folders split by another number of processes cannot be continued (the split differs)."""
    for d in _rank_dirs(out):
        info = d / "world.json"
        old = json.loads(info.read_text())["world_size"] if info.exists() else None
        if int(d.name[5:]) >= world or (old is not None and old != world):
            raise StoreError(f"{out} holds unmerged rank folders of a run with {old or 'more'} processes, not {world}: "
                             "rerun with that many processes, or delete the rank-* folders to start the stage over")


def _check_merged(stage: str, out: Path, inputs: Sequence, key: Callable[[Any], str],
                  fingerprint: Callable[[Any], str | None] | None, resume: ResumeOptions, rank: int) -> None:
    """Several processes: refuse changed inputs of a merged stage folder; set its rejects aside (rank 0)."""
    if (out / PROGRESS_NAME).exists():
        try:
            check_resume(stage, out, inputs, key, fingerprint or record_fingerprint, read_progress(out / PROGRESS_NAME))
        except StoreError as e:
            if resume.redo_changed:
                raise StoreError(f"{e}; --redo-changed runs with one process only") from e
            raise
    if resume.retry_rejects and rank == 0:
        set_rejects_aside(out, (key(x) for x in inputs))


def _finished(out: Path, keys: Sequence[str], count_rejects: bool = True) -> bool:
    """A merged (or single-process) stage folder that lists every input as done (or rejected)."""
    if not (out / PROGRESS_NAME).exists():
        return False
    done = set(read_progress(out / PROGRESS_NAME))
    if count_rejects and (out / REJECTS_NAME).exists():
        done |= RejectsFile(out).rejected_ids()
    return all(k in done for k in keys)


def _merge_ranks(out: Path, stage: str, record_type: type[Record], keys: list[str], record_key: Callable[[Any], str],
                 manifest: tuple[dict, dict, list]) -> None:
    """Rank 0: rank folders -> ``out`` in input order, then a progress file, then drop the folders.

    The progress file is written last (atomically): a kill mid-merge leaves the rank folders
    and no complete progress, so the rerun redoes the merge from scratch.
    """
    dirs = _rank_dirs(out)
    stale = [s for _, _, s in _list_shards(out)]  # what an interrupted merge (or one-process run) left
    stale += [out / n for n in (PROGRESS_NAME, REJECTS_NAME, MANIFEST_NAME, LOCK_NAME, PROGRESS_NAME + ".tmp", FINGERPRINTS_NAME)]
    for p in stale:
        p.unlink(missing_ok=True)
    merge_stores(dirs, out, record_type, order=keys, key=record_key)
    merge_fingerprints(dirs, out)
    config, seeds, input_paths = manifest
    write_manifest(out, stage, config, seeds, input_paths)
    done: set[str] = set()
    for d in dirs:
        done.update(read_progress(d / PROGRESS_NAME))
    tmp = out / (PROGRESS_NAME + ".tmp")
    with tmp.open("w") as f:
        f.write("".join(json.dumps(k) + "\n" for k in keys if k in done))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / PROGRESS_NAME)
    _fsync_dir(out)
    for d in dirs:
        shutil.rmtree(d)


def _run(stage: str, out: Path, record_type: type[Record], inputs: Sequence, key: Callable[[Any], str],
         make_process: Callable[[], Callable[[list], list[Record]]], record_key: Callable[[Any], str], *,
         config: dict, seeds: dict | None = None, input_paths: Sequence[Path] = (), batch_size: int,
         on_error: str, rank: int | None, world: int | None, fingerprint: Callable[[Any], str | None] | None = None,
         resume: ResumeOptions | None = None):
    """``run_stage`` in one process, or this process's share + barrier + merge by rank 0.

    ``record_key`` maps an output record to the key of the input it came from (merge order).
    ``fingerprint`` (default: the input record's content) detects inputs changed since they were
    done; ``resume`` says what to do about them and about earlier rejects.
    Returns the StageResult of this process's share (None when the stage was already merged).
    """
    if rank is None or world is None:
        rank, world = rank_and_world()
    resume = resume or ResumeOptions()
    kw = dict(config=config, seeds=seeds, input_paths=list(input_paths), batch_size=batch_size, on_error=on_error,
              fingerprint=fingerprint, record_key=record_key, retry_rejects=resume.retry_rejects,
              redo_changed=resume.redo_changed)
    if world <= 1:
        return run_stage(stage, out, record_type, inputs, key, None, make_process=make_process, **kw)  # loads only if work is left
    out = Path(out)
    keys = [key(x) for x in inputs]
    _check_merged(stage, out, inputs, key, fingerprint, resume, rank)
    done = _finished(out, keys, count_rejects=not resume.retry_rejects)
    if not done:
        _check_world(out, world)
    if rank == 0 and read_manifest(out) is not None:  # same refusal as one process: another config
        write_manifest(out, stage, config, seeds or {}, list(input_paths))
    res = None
    if not done:
        (out / f"rank-{rank}").mkdir(parents=True, exist_ok=True)
        # atomic (temporary file + rename): the other ranks read it in _check_world while this one writes it
        write_json(out / f"rank-{rank}" / "world.json", {"rank": rank, "world_size": world})
        res = run_stage(stage, out, record_type, inputs, key, None, make_process=make_process, rank=rank, world_size=world, **kw)
    barrier()
    if rank == 0:
        if not done:
            _merge_ranks(out, stage, record_type, keys, record_key, (config, seeds or {}, list(input_paths)))
        for d in _rank_dirs(out):  # left by a kill between the merge and the clean-up
            shutil.rmtree(d)
    barrier()
    return res


def run_sample(cfg: SampleConfig, prompts: list[Prompt], prompts_path: Path, out: Path, on_error: str = "raise",
               rank: int | None = None, world: int | None = None, resume: ResumeOptions | None = None):
    """Stage 1 over ``prompts`` into ``out`` (resumable; split across processes, see module doc)."""
    if not cfg.model and not (cfg.backend == "openai" and cfg.endpoint.model):
        raise ConfigError("sample: give --model (or model in the config): the policy that samples the answers")
    base = _base_dir(prompts_path)
    served = StageBackend("sample", cfg, out)  # backend vllm / openai (rlaifv/backends/); hf: the code below

    def make_process():
        if served.active:
            return lambda batch: sample_via(served.get(), batch, [load_image(p, base, cfg.max_image_pixels) for p in batch], cfg,
                                            model_name=cfg.model or cfg.endpoint.model)
        model, proc = _load(cfg.model, cfg)

        def process(batch: list[Prompt]) -> list[Candidate]:
            return sample(model, proc, batch, [load_image(p, base, cfg.max_image_pixels) for p in batch], cfg, model_name=cfg.model)

        return process

    res = _run("sample", out, Candidate, prompts, lambda p: p.prompt_id, make_process, lambda c: c.prompt_id,
               config=manifest_view(asdict(cfg)), seeds={"seed": cfg.seed}, input_paths=[prompts_path],
               batch_size=cfg.prompts_per_batch, on_error=on_error, rank=rank, world=world,
               fingerprint=lambda p: prompt_fingerprint(p, base), resume=resume)
    served.finish()
    return res


def run_divide(cfg: DivideConfig, prompts: list[Prompt], candidates: list[Candidate], out: Path, on_error: str = "raise",
               rank: int | None = None, world: int | None = None, resume: ResumeOptions | None = None):
    """Stage 2: candidates -> claims. An empty answer is a bad input (error or reject).

    Writes ``out/summary.json`` (answers with 0 claims; with the LLM backend its fallbacks and
    dropped claims, raw replies in ``out/llm_raw.jsonl``, a line per batch in ``out/stage.log``)
    and fails (LLMFallbackError) when fallbacks exceed ``max_fallback_rate`` (``llm_stage.py``).
    """
    question_of = {p.prompt_id: p.question for p in prompts}
    llm = LLMStageRun("divide", out, cfg.backend, cfg.llm, cfg.endpoint, cfg.max_fallback_rate, rank, world)

    def process(batch: list[Candidate]) -> list[Claim]:
        for c in batch:
            if not c.text.strip():
                raise ValueError(f"candidate {c.id!r}: empty answer")
        llm.before_batch()
        t = time.time()
        results = divide(batch, question_of, cfg, lm=llm.lm())
        llm.after_batch([{"id": r.candidate_id, "raw": r.raw, "parsed": r.parsed, "dropped": r.dropped, "fallback": r.fallback,
                          "claims": [c.text for c in r.claims]} for r in results], time.time() - t, "answers")
        return [cl for r in results for cl in r.claims]

    res = _run("divide", out, Claim, candidates, lambda c: c.id, lambda: process, lambda cl: cl.candidate_id,
               config=manifest_config(asdict(cfg)), batch_size=llm.batch_size(16), on_error=on_error, rank=rank, world=world,
               fingerprint=lambda c: content_fingerprint(c.to_dict(), question_of.get(c.prompt_id)), resume=resume)
    per_candidate = Counter(cl.candidate_id for cl in read_records(out, Claim))
    finish_stage("divide", out, [c.id for c in candidates], per_candidate, llm, cfg.fallback)
    return res


def run_ask(cfg: AskConfig, claims: list[Claim], out: Path, on_error: str = "raise", rank: int | None = None, world: int | None = None,
            resume: ResumeOptions | None = None):
    """Stage 3: claims -> polar questions (LLM backend: raw replies, log, summary and threshold as in run_divide)."""
    llm = LLMStageRun("ask", out, cfg.backend, cfg.llm, cfg.endpoint, cfg.max_fallback_rate, rank, world)

    def process(batch: list[Claim]) -> list[PolarQuestion]:
        llm.before_batch()
        t = time.time()
        results = ask_results(batch, cfg, lm=llm.lm())
        llm.after_batch([{"id": r.question.claim_id, "raw": r.raw, "question": r.question.question, "fallback": r.fallback}
                         for r in results], time.time() - t, "claims")
        return [r.question for r in results]

    res = _run("ask", out, PolarQuestion, claims, lambda c: c.id, lambda: process, lambda q: q.claim_id,
               config=manifest_config(asdict(cfg)), batch_size=llm.batch_size(64), on_error=on_error, rank=rank, world=world,
               resume=resume)
    per_claim = Counter(q.claim_id for q in read_records(out, PolarQuestion))
    finish_stage("ask", out, [c.id for c in claims], per_claim, llm, "rules")
    return res


def prompt_of_claim(claim_id: str) -> str:
    """``prompt#k/i`` -> ``prompt`` (ids are built that way by the records)."""
    return claim_id.rsplit("/", 1)[0].rsplit("#", 1)[0]


def run_conquer(cfg: ConquerConfig, prompts: list[Prompt], prompts_path: Path, questions: list[PolarQuestion], out: Path,
                on_error: str = "raise", rank: int | None = None, world: int | None = None, resume: ResumeOptions | None = None):
    """Stage 4: every question about one image is scored together (shared prefix)."""
    if not cfg.model and not (cfg.backend == "openai" and cfg.endpoint.model):
        raise ConfigError("conquer: give --model (or model in the config): the labeler, or the policy itself for self-feedback")
    check_conquer_inputs(cfg, prompts)  # e.g. a sandbox-only stand-in mode refuses real prompts
    base = _base_dir(prompts_path)
    by_prompt: dict[str, list[PolarQuestion]] = defaultdict(list)
    for q in questions:
        by_prompt[prompt_of_claim(q.claim_id)].append(q)
    items = [p for p in prompts if p.prompt_id in by_prompt]
    served = StageBackend("conquer", cfg, out)  # backend vllm / openai (rlaifv/backends/); hf: the code below

    def make_process():
        if served.active:
            def via(batch: list[Prompt]) -> list[ClaimScore]:
                scores, outside = score_via(served.get(), [(load_image(p, base, cfg.max_image_pixels), by_prompt[p.prompt_id]) for p in batch], cfg)
                served.record_scored([s.claim_id for s in scores], outside)
                return scores

            return via
        model, proc = _load(cfg.model, cfg)

        def process(batch: list[Prompt]) -> list[ClaimScore]:
            return conquer(model, proc, [(load_image(p, base, cfg.max_image_pixels), by_prompt[p.prompt_id]) for p in batch], cfg)

        return process

    res = _run("conquer", out, ClaimScore, items, lambda p: p.prompt_id, make_process, lambda s: prompt_of_claim(s.claim_id),
               config=manifest_view(asdict(cfg)), batch_size=4, on_error=on_error, rank=rank, world=world, resume=resume,
               fingerprint=lambda p: prompt_fingerprint(p, base, [q.to_dict() for q in by_prompt[p.prompt_id]]))
    served.finish()
    return res


MASS_NAME = "mass.json"


def conquer_mass(cfg: ConquerConfig, out: Path, scores: Sequence[ClaimScore] | None = None) -> dict:
    """The yes+no mass summary of a conquer folder, written to ``out/mass.json``; warns when low."""
    scores = read_store(out, ClaimScore) if scores is None else scores
    report = mass_summary(scores, cfg.min_mean_mass)
    report["mode"] = cfg.mode
    if cfg.mode != "direct":  # the stand-ins write p_yes/p_no of 0/1: the mass says nothing there
        report["warning"] = None
    if rank_and_world()[0] == 0:
        tmp = out / (MASS_NAME + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out / MASS_NAME)
    if report["warning"]:
        warnings.warn(f"conquer ({out}): {report['warning']}", stacklevel=2)
    return report


def run_pairs(cfg: PairsConfig, prompts, candidates, claims, scores, out: Path) -> dict:
    """Stage 5: scores, pairs, length balancing; rewritten whole on every run (it is fast)."""
    claims_by: dict[str, list[Claim]] = defaultdict(list)
    for c in claims:
        claims_by[c.candidate_id].append(c)
    scored, mismatches = score_candidates(candidates, claims_by, {s.claim_id: s for s in scores})
    return _write_pairs(cfg, prompts, scored, mismatches, out)


def _write_pairs(cfg: PairsConfig, prompts, scored, mismatches, out: Path) -> dict:
    """Pairs + stats + scored candidates, replacing ``out`` atomically."""
    pairs, stats = make_pairs(scored, {p.prompt_id: p for p in prompts}, cfg, mismatches=mismatches)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with RecordStore(tmp, PreferencePair) as store:
        store.write(pairs)
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
    (tmp / "scored_candidates.json").write_text(json.dumps([c.to_dict() for c in scored], indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return stats


def feedback(cfg: FeedbackConfig, resume: ResumeOptions | None = None) -> dict:
    """Run every stage in order; returns a summary (counts and wall time per stage).

    With several processes every one runs stages 1-4 (its share, then the merged result); only
    rank 0 makes the pairs and writes ``feedback.json``; the others return without ``pairs``.
    """
    cfg = with_models(cfg)
    out = Path(cfg.out)
    prompts, ppath = _prompts(cfg)
    check_conquer_inputs(cfg.conquer, prompts)  # before any sampling: a sandbox-only stand-in refuses real prompts
    rank, _ = rank_and_world()
    summary: dict = {"stages": {}}
    t = time.time()
    _note_resume(summary, "sample", run_sample(cfg.sample, prompts, ppath, out / "candidates", cfg.on_error, resume=resume))
    if rank_and_world()[1] > 1 and cfg.on_error == "skip":  # the merge rebuilt candidates/rejects.jsonl from the ranks'
        _prompts(cfg)  # so rank 0 records the malformed prompt lines again (an identical entry is never doubled)
    summary["stages"]["sample"] = round(time.time() - t, 2)
    candidates = read_store(out / "candidates", Candidate)
    if cfg.pairs.scoring == "holistic":
        return _holistic(cfg, prompts, ppath, candidates, summary, rank, resume)
    t = time.time()
    _note_resume(summary, "divide", run_divide(cfg.divide, prompts, candidates, out / "claims", cfg.on_error, resume=resume))
    summary["stages"]["divide"] = round(time.time() - t, 2)
    summary["divide"] = read_summary(out / "claims")  # answers with 0 claims, LLM fallbacks (llm_stage.py)
    claims = read_store(out / "claims", Claim)
    t = time.time()
    _note_resume(summary, "ask", run_ask(cfg.ask, claims, out / "questions", cfg.on_error, resume=resume))
    summary["stages"]["ask"] = round(time.time() - t, 2)
    summary["ask"] = read_summary(out / "questions")
    questions = read_store(out / "questions", PolarQuestion)
    t = time.time()
    _note_resume(summary, "conquer", run_conquer(cfg.conquer, prompts, ppath, questions, out / "scores", cfg.on_error, resume=resume))
    summary["stages"]["conquer"] = round(time.time() - t, 2)
    scores = read_store(out / "scores", ClaimScore)
    summary["counts"] = {"prompts": len(prompts), "candidates": len(candidates), "truncated": _truncated(candidates),
                         "claims": len(claims), "questions": len(questions), "scores": len(scores)}
    summary["conquer"] = conquer_mass(cfg.conquer, out / "scores", scores)
    if rank != 0:
        return summary
    t = time.time()
    summary["pairs"] = run_pairs(cfg.pairs, prompts, candidates, claims, scores, out / "pairs")
    summary["stages"]["pairs"] = round(time.time() - t, 2)
    _finish_summary(out, summary)
    return summary


def _holistic(cfg: FeedbackConfig, prompts: list[Prompt], ppath: Path, candidates: list[Candidate], summary: dict, rank: int,
              resume: ResumeOptions | None = None) -> dict:
    """The paper's ablation baseline: the labeler judges each whole answer once (no divide)."""
    out = Path(cfg.out)
    question_of = {p.prompt_id: p.question for p in prompts}
    questions = [PolarQuestion(f"{c.id}/holistic", c.text, holistic_question(question_of[c.prompt_id], c.text)) for c in candidates if c.text.strip()]
    t = time.time()
    _note_resume(summary, "conquer", run_conquer(cfg.conquer, prompts, ppath, questions, out / "holistic_scores", cfg.on_error,
                                                 resume=resume))
    summary["stages"]["conquer_holistic"] = round(time.time() - t, 2)
    records = read_store(out / "holistic_scores", ClaimScore)
    scores = {s.claim_id.rsplit("/", 1)[0]: s for s in records}
    summary["counts"] = {"prompts": len(prompts), "candidates": len(candidates), "questions": len(questions), "scores": len(scores)}
    summary["conquer"] = conquer_mass(cfg.conquer, out / "holistic_scores", records)
    if rank != 0:
        return summary
    scored, mismatches = score_holistic(candidates, scores)
    summary["pairs"] = _write_pairs(cfg.pairs, prompts, scored, mismatches, out / "pairs")
    _finish_summary(out, summary)
    return summary


def _truncated(candidates: list[Candidate]) -> int:
    """Candidates that hit ``max_new_tokens`` before a stop token (``decoding.truncated``, sample stage)."""
    return sum(1 for c in candidates if c.decoding.get("truncated"))


def _note_resume(summary: dict, stage: str, res) -> None:
    """Record per stage how many earlier rejects this run carried over and which changed inputs it redid."""
    summary.setdefault("rejects_carried", {})[stage] = res.n_rejects_carried if res is not None else 0
    if res is not None and res.redone:
        summary.setdefault("redone", {})[stage] = list(res.redone)


def _finish_summary(out: Path, summary: dict) -> None:
    """Collect the run's warnings (low labeler mass, 0 pairs and why) and write ``feedback.json``."""
    notes = []
    if summary.get("conquer", {}).get("warning"):
        notes.append(summary["conquer"]["warning"])
    if summary["pairs"].get("diagnosis"):
        notes.append(f"0 pairs: {summary['pairs']['diagnosis']}")
        warnings.warn(f"feedback ({out}): 0 pairs: {summary['pairs']['diagnosis']}", stacklevel=3)
    summary["rejected"] = rejected_counts(out)
    n_rej, n_kept = summary["rejected"].get("sample", 0), summary.get("counts", {}).get("prompts", 0)
    if n_rej and n_rej >= n_kept:
        notes.append(f"{n_rej} prompts rejected, {n_kept} read: half or more of the input is bad "
                     f"(see {out / STAGE_FOLDERS['sample'] / REJECTS_NAME})")
        warnings.warn(f"feedback ({out}): {notes[-1]}", stacklevel=3)
    n_cut, n_cand = summary.get("counts", {}).get("truncated", 0), summary.get("counts", {}).get("candidates", 0)
    if n_cand and n_cut * 2 >= n_cand:
        notes.append(f"{n_cut} of {n_cand} candidates hit sample.max_new_tokens before a stop token (truncated): "
                     "raise --max-new-tokens, or their unfinished last sentences become claims")
        warnings.warn(f"feedback ({out}): {notes[-1]}", stacklevel=3)
    notes += [line for st in ("divide", "ask") for line in summary_lines(summary.get(st), problems_only=True)]  # 0 claims, fallbacks
    served = {st: b for st in ("sample", "conquer", "conquer_holistic") if (b := read_backend_summary(out / STAGE_FOLDERS[st]))}
    if served:  # vllm / openai stages: request counts, retries, n fallbacks, yes/no outside the top-k (backends/stage.py)
        summary["backends"] = served
        notes += [f"{st}: {w}" for st, b in served.items() for w in b.get("warnings", [])]
    summary["warnings"] = notes
    _write_summary(out, summary)


def _write_summary(out: Path, summary: dict) -> None:
    tmp = out / "feedback.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "feedback.json")


def read_store(path: Path, kind):
    """All records of a finished stage folder (in write order)."""
    return list(read_records(path, kind))
