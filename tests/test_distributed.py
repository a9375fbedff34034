"""Several processes (``accelerate launch``) write exactly what one process writes.

Two CPU processes run ``rlaifv feedback`` under ``accelerate launch --multi_gpu`` (on a CPU-only
machine that launcher starts torchrun-style workers with RANK/WORLD_SIZE; the barrier uses
gloo). ``--cpu`` is not used: accelerate starts a single process for it unless MPI is set up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

STAGES = ("candidates", "claims", "questions", "scores", "pairs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, model: Path, out: Path) -> Path:
    cfg = {
        "sandbox_prompts": 4,
        "out": str(out),
        "on_error": "skip",
        "sample": {"model": str(model), "n": 2, "max_new_tokens": 12, "prompts_per_batch": 2},
        "conquer": {"model": str(model)},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200", CUDA_VISIBLE_DEVICES="")


def _lines(run: Path) -> dict[str, list[str]]:
    """Every record line of every stage folder, in file order, plus each stage's progress and rejects."""
    snap: dict[str, list[str]] = {}
    for stage in STAGES:
        snap[stage] = [line for f in sorted((run / stage).glob("shard-*.jsonl*")) for line in f.read_text().splitlines()]
        for extra in ("progress.jsonl", "rejects.jsonl"):
            f = run / stage / extra
            snap[f"{stage}/{extra}"] = f.read_text().splitlines() if f.exists() else []
    for f in sorted((run / "pairs").iterdir()):  # pairs, stats and scored candidates, whatever their files
        snap[f"pairs/{f.name}"] = f.read_text().splitlines()
    return snap


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate not installed")
def test_two_processes_write_what_one_process_writes(tiny_sandbox_model, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "rlaifv.cli", "feedback", "--config", str(_config(tmp_path, tiny_sandbox_model, single))],
                   env=_env(), check=True, capture_output=True, timeout=120)

    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "rlaifv.cli", "feedback", "--config", str(_config(tmp_path, tiny_sandbox_model, multi))]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sample (rank 1/2)" in proc.stdout and "sample (rank 0/2)" in proc.stdout  # two processes shared the work

    want, got = _lines(single), _lines(multi)
    assert want["candidates"] and want["claims"] and want["scores"]
    for name in want:
        assert got[name] == want[name], name
    for stage in STAGES[:-1]:
        assert not list((multi / stage).glob("rank-*")), "rank folders are removed after the merge"
        assert (multi / stage / "manifest.json").exists()
    assert (multi / "feedback.json").exists()

    # a rerun after the merge skips every stage: nothing is sampled again, nothing changes
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(rank" not in again.stdout
    assert _lines(multi) == want


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate not installed")
def test_two_process_dpo_ends_with_identical_weights(tiny_sandbox_model, tmp_path):
    """`accelerate launch` (2 CPU processes, gloo): data-parallel DPO keeps both replicas identical,
    and matches one process on the same global batches up to float rounding."""
    from test_train import _pairs_data, _weights

    pairs, prompts = _pairs_data(tmp_path)
    args = ["train", "--pairs", str(pairs), "--prompts", str(prompts), "--model", str(tiny_sandbox_model),
            "--finetune", "full", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3"]
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "rlaifv.cli"]
    proc = subprocess.run(cmd + args + ["--out", str(tmp_path / "multi")], env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "multi" / "train.json").read_text())
    prints = summary["rank_weight_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    subprocess.run([sys.executable, "-m", "rlaifv.cli"] + args + ["--out", str(tmp_path / "single")], env=_env(),
                   check=True, capture_output=True, timeout=120)
    a = _weights(tmp_path / "multi" / "checkpoints" / "step-000002")
    b = _weights(tmp_path / "single" / "checkpoints" / "step-000002")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
