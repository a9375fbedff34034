"""``rlaifv feedback``: stages 1-5 (sample, divide, ask, conquer, pairs) with one config.

Each stage writes its own inspectable, resumable folder under ``out``::

    out/candidates/  out/claims/  out/questions/  out/scores/  out/pairs/  out/feedback.json

Rerunning the same command after a kill continues where it stopped (see ``runner.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..images import load_image
from ..models.load import load_vlm
from ..records import Candidate, Claim, ClaimScore, PolarQuestion, PreferencePair, Prompt
from ..runner import run_stage
from ..store import RecordStore, read_records
from .ask import AskConfig, ask
from .conquer import ConquerConfig, conquer
from .divide import DivideConfig, divide
from .pairs import PairsConfig, make_pairs, score_candidates
from .sample import SampleConfig, sample


@dataclass
class FeedbackConfig:
    """One config for the whole feedback engine (YAML sections = stage configs)."""

    prompts: str = ""  # prompts file (JSONL/parquet of Prompt records); empty: use `sandbox_prompts`
    sandbox_prompts: int = 0  # >0: generate this many sandbox describe prompts into out/prompts
    out: str = "runs/feedback"
    on_error: str = "raise"  # raise | skip (bad inputs go to each stage's rejects.jsonl)
    sample: SampleConfig = field(default_factory=SampleConfig)
    divide: DivideConfig = field(default_factory=DivideConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    conquer: ConquerConfig = field(default_factory=ConquerConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)


def _prompts(cfg: FeedbackConfig) -> tuple[list[Prompt], Path]:
    if cfg.prompts:
        path = Path(cfg.prompts)
    elif cfg.sandbox_prompts > 0:
        from ..sandbox.prompts import write_sandbox_prompts

        path = write_sandbox_prompts(Path(cfg.out) / "prompts", cfg.sandbox_prompts)
    else:
        raise ValueError("no prompts: give `prompts` (a JSONL/parquet file) or `sandbox_prompts` > 0")
    return list(read_records(path, Prompt)), path


def _base_dir(path: Path) -> Path:
    return path.parent if path.is_file() else path


def run_sample(cfg: SampleConfig, prompts: list[Prompt], prompts_path: Path, out: Path, on_error: str = "raise", rank: int = 0, world: int = 1):
    """Stage 1 over ``prompts`` into ``out`` (resumable)."""
    model, proc = load_vlm(cfg.model, cfg.device, cfg.dtype)
    base = _base_dir(prompts_path)

    def process(batch: list[Prompt]) -> list[Candidate]:
        return sample(model, proc, batch, [load_image(p, base) for p in batch], cfg, model_name=cfg.model)

    return run_stage("sample", out, Candidate, prompts, lambda p: p.prompt_id, process, config=asdict(cfg),
                     seeds={"seed": cfg.seed}, input_paths=[prompts_path], batch_size=cfg.prompts_per_batch,
                     on_error=on_error, rank=rank, world_size=world)


def run_divide(cfg: DivideConfig, prompts: list[Prompt], candidates: list[Candidate], out: Path, on_error: str = "raise"):
    """Stage 2: candidates -> claims. An empty answer is a bad input (error or reject)."""
    question_of = {p.prompt_id: p.question for p in prompts}

    def process(batch: list[Candidate]) -> list[Claim]:
        for c in batch:
            if not c.text.strip():
                raise ValueError(f"candidate {c.id!r}: empty answer")
        return [cl for r in divide(batch, question_of, cfg) for cl in r.claims]

    return run_stage("divide", out, Claim, candidates, lambda c: c.id, process, config=asdict(cfg), batch_size=16, on_error=on_error)


def run_ask(cfg: AskConfig, claims: list[Claim], out: Path, on_error: str = "raise"):
    """Stage 3: claims -> polar questions."""
    return run_stage("ask", out, PolarQuestion, claims, lambda c: c.id, lambda batch: ask(batch, cfg),
                     config=asdict(cfg), batch_size=64, on_error=on_error)


def prompt_of_claim(claim_id: str) -> str:
    """``prompt#k/i`` -> ``prompt`` (ids are built that way by the records)."""
    return claim_id.rsplit("/", 1)[0].rsplit("#", 1)[0]


def run_conquer(cfg: ConquerConfig, prompts: list[Prompt], prompts_path: Path, questions: list[PolarQuestion], out: Path, on_error: str = "raise"):
    """Stage 4: every question about one image is scored together (shared prefix)."""
    model, proc = load_vlm(cfg.model, cfg.device, cfg.dtype)
    base = _base_dir(prompts_path)
    by_prompt: dict[str, list[PolarQuestion]] = defaultdict(list)
    for q in questions:
        by_prompt[prompt_of_claim(q.claim_id)].append(q)
    items = [p for p in prompts if p.prompt_id in by_prompt]

    def process(batch: list[Prompt]) -> list[ClaimScore]:
        return conquer(model, proc, [(load_image(p, base), by_prompt[p.prompt_id]) for p in batch], cfg)

    return run_stage("conquer", out, ClaimScore, items, lambda p: p.prompt_id, process, config=asdict(cfg), batch_size=4, on_error=on_error)


def run_pairs(cfg: PairsConfig, prompts, candidates, claims, scores, out: Path) -> dict:
    """Stage 5: scores, pairs, length balancing; rewritten whole on every run (it is fast)."""
    claims_by: dict[str, list[Claim]] = defaultdict(list)
    for c in claims:
        claims_by[c.candidate_id].append(c)
    scored, mismatches = score_candidates(candidates, claims_by, {s.claim_id: s for s in scores})
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


def feedback(cfg: FeedbackConfig) -> dict:
    """Run every stage in order; returns a summary (counts and wall time per stage)."""
    out = Path(cfg.out)
    prompts, ppath = _prompts(cfg)
    summary: dict = {"stages": {}}
    t = time.time()
    run_sample(cfg.sample, prompts, ppath, out / "candidates", cfg.on_error)
    summary["stages"]["sample"] = round(time.time() - t, 2)
    candidates = read_store(out / "candidates", Candidate)
    t = time.time()
    run_divide(cfg.divide, prompts, candidates, out / "claims", cfg.on_error)
    summary["stages"]["divide"] = round(time.time() - t, 2)
    claims = read_store(out / "claims", Claim)
    t = time.time()
    run_ask(cfg.ask, claims, out / "questions", cfg.on_error)
    summary["stages"]["ask"] = round(time.time() - t, 2)
    questions = read_store(out / "questions", PolarQuestion)
    t = time.time()
    run_conquer(cfg.conquer, prompts, ppath, questions, out / "scores", cfg.on_error)
    summary["stages"]["conquer"] = round(time.time() - t, 2)
    scores = read_store(out / "scores", ClaimScore)
    t = time.time()
    summary["pairs"] = run_pairs(cfg.pairs, prompts, candidates, claims, scores, out / "pairs")
    summary["stages"]["pairs"] = round(time.time() - t, 2)
    summary["counts"] = {"prompts": len(prompts), "candidates": len(candidates), "claims": len(claims), "questions": len(questions), "scores": len(scores)}
    tmp = out / "feedback.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "feedback.json")
    return summary


def read_store(path: Path, kind):
    """All records of a finished stage folder (in write order)."""
    return list(read_records(path, kind))
