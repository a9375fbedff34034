"""`rlaifv train` in 2 CPU processes (gloo) launched with the SHIPPED accelerate config files.

* DDP (``configs/accelerate/ddp_8gpu.yaml`` with ``--num_processes 2``): LoRA + gradient
  checkpointing + ``--max-steps 2`` + ``--save-total-limit 1``; the merged checkpoint loads with
  plain transformers and equals the single-process run on the same global batches.
* FSDP (``configs/accelerate/fsdp.yaml``): accelerate 1.16 does not shard CPU processes (it turns
  ``ACCELERATE_USE_FSDP`` into FSDP only for GPU-type process groups; gloo processes stay
  MULTI_CPU), so ``rlaifv train`` must stop with a one-line error instead of silently running DDP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import _env, _free_port
from test_train import _pairs_data, _weights

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")

pytestmark = pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                                reason="accelerate not installed")


def _launch(config: str) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", str(ROOT / "configs" / "accelerate" / config), "--num_processes", "2",
            "--mixed_precision", "no", "--main_process_port", str(_free_port()), "-m", "rlaifv.cli"]


def test_ddp_two_cpu_processes_with_the_shipped_config(tiny_sandbox_model, tmp_path):
    pairs, prompts = _pairs_data(tmp_path)
    (tmp_path / "train.yaml").write_text("lora_dropout: 0.0\nlora_r: 4\n")  # dropout masks differ per process
    args = ["train", "--config", str(tmp_path / "train.yaml"), "--pairs", str(pairs), "--prompts", str(prompts),
            "--model", str(tiny_sandbox_model), "--finetune", "lora",
            "--batch-size", "4", "--lr", "1e-2", "--max-steps", "2", "--save-total-limit", "1", "--gradient-checkpointing",
            "--device", "cpu"]
    proc = subprocess.run(_launch("ddp_8gpu.yaml") + args + ["--out", str(tmp_path / "multi")], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "multi" / "train.json").read_text())
    assert summary["steps"] == 2 and len(summary["rank_weight_fingerprints"]) == 2
    assert len(set(summary["rank_weight_fingerprints"])) == 1
    from rlaifv.config import load_config
    from rlaifv.training.dpo import DPOConfig, train_dpo

    single_cfg = {"pairs": str(pairs), "prompts": str(prompts), "model": str(tiny_sandbox_model), "finetune": "lora", "batch_size": 4,
                  "lr": 1e-2, "max_steps": 2, "save_total_limit": 1, "gradient_checkpointing": True, "device": "cpu",
                  "out": str(tmp_path / "single"), "progress": False}  # the same flags, in this process (saves a start-up)
    train_dpo(load_config(DPOConfig, tmp_path / "train.yaml", single_cfg))
    multi, single = tmp_path / "multi" / "checkpoints", tmp_path / "single" / "checkpoints"
    assert sorted(p.name for p in multi.iterdir()) == ["step-000002"]  # save_total_limit 1: step 1 deleted
    a, b = _weights(multi / "step-000002"), _weights(single / "step-000002")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    from transformers import AutoModelForImageTextToText

    base = _weights(Path(tiny_sandbox_model))
    loaded = AutoModelForImageTextToText.from_pretrained(multi / "step-000002")
    state = loaded.state_dict()
    assert any(not torch.equal(state[k], base[k]) for k in base if k in state)  # LoRA merged into the weights
    assert all(torch.allclose(state[k], a[k]) for k in a if k in state)


def test_fsdp_config_on_cpu_processes_is_refused_in_one_line(tiny_sandbox_model, tmp_path):
    pairs, prompts = _pairs_data(tmp_path)
    args = ["train", "--pairs", str(pairs), "--prompts", str(prompts), "--model", str(tiny_sandbox_model), "--max-steps", "1",
            "--device", "cpu", "--out", str(tmp_path / "fsdp")]
    proc = subprocess.run(_launch("fsdp.yaml") + args, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "the accelerate config asks for FSDP, but accelerate runs these processes as MULTI_CPU on cpu" in proc.stdout, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "fsdp" / "checkpoints").exists()
