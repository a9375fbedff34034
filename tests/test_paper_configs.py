"""The ready configs of the paper's recipe (configs/paper/, README "Scaling up") load into their
config classes with the paper's values. They name CUDA devices, so the GPU check is told a GPU
exists (the configs themselves cannot run here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlaifv.config import load_config

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def test_feedback_recipe(fake_gpu):
    from rlaifv.stages.feedback import FeedbackConfig

    f = load_config(FeedbackConfig, PAPER / "feedback_llava15_7b.yaml", {})
    assert (f.sample.n, f.sample.temperature, f.sample.max_new_tokens) == (10, 0.7, 512)
    assert (f.divide.backend, f.ask.backend, f.conquer.backend) == ("llm", "llm", "openai")
    assert f.conquer.endpoint.base_url.endswith("/v1") and f.conquer.model == "llava-hf/llava-v1.6-34b-hf"
    assert (f.pairs.min_score_gap, f.pairs.max_pairs_per_prompt, f.pairs.length_balance) == (1, 2, True)


def test_train_recipe(fake_gpu):
    from rlaifv.training.dpo import DPOConfig

    t = load_config(DPOConfig, PAPER / "train_llava15_7b.yaml", {})
    assert (t.beta, t.nll_weight, t.lr, t.warmup_ratio, t.weight_decay) == (0.1, 0.0, 5e-7, 0.05, 0.01)
    assert (t.epochs, t.batch_size, t.checkpoints_per_epoch, t.max_length) == (4, 8, 4, 2048)
    assert (t.mixed_precision, t.gradient_checkpointing, t.finetune, t.freeze_vision) == ("bf16", True, "full", True)


def test_self_feedback_recipe_resolves(fake_gpu):
    from rlaifv.stages.iterate import IterateConfig, resolve

    i = resolve(load_config(IterateConfig, PAPER / "self_feedback_12b.yaml", {"prompts": "data/prompts.jsonl"}))
    assert (i.iterations, i.labeler, i.selection.kind) == (4, "self", "labeler")
    assert (i.train.finetune, i.train.lora_r, i.train.lora_alpha, i.train.lr) == ("lora", 64, 16, 1e-5)
