"""Shared fixtures: everything offline, small thread counts, tiny sandbox models."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(2)

#: A sandbox model small enough for tests: 48 px images, patch 8 -> 36 patches -> 9 image tokens.
TINY_MODEL = dict(image_size=48, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                  text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=2, intermediate=64, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_pretrain_config():
    from rlaifv.config import load_config
    from rlaifv.sandbox.pretrain import PretrainConfig, preset

    return load_config(PretrainConfig, None, {"model": TINY_MODEL, "steps": 4, "vision_steps": 2, "batch_size": 4, "warmup": 2}, base=preset("labeler"))


@pytest.fixture(scope="session")
def tiny_sandbox_model(tmp_path_factory, tiny_pretrain_config):
    """A few steps of the labeler recipe on a tiny model, saved as a standard checkpoint."""
    from rlaifv.sandbox.pretrain import pretrain

    out = tmp_path_factory.mktemp("tiny_sandbox") / "model"
    pretrain(tiny_pretrain_config, out)
    return out


@pytest.fixture(scope="session")
def rlaifv_bin():
    """The console script as a user calls it (installed by `make`); falls back to `python -m`."""
    exe = Path(sys.executable).parent / "rlaifv"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("rlaifv")
    return [found] if found else [sys.executable, "-m", "rlaifv.cli"]
