"""A stage's serving backend is closed when the stage finishes, so that a vLLM engine frees its
GPU before the next stage (the labeler's) starts its own."""

from __future__ import annotations

import json
from types import SimpleNamespace

from rlaifv.backends import stage as stage_mod
from rlaifv.backends.base import Capabilities


class _Fake:
    name = "vllm"

    def __init__(self) -> None:
        self.closed = 0

    def counts(self) -> dict:
        return {"requests": 3}

    def capabilities(self) -> Capabilities:
        return Capabilities("vllm", sample_n=True, seed=True, yes_no="top_logprobs", answer_logprobs=True)

    def close(self) -> None:
        self.closed += 1


def test_finish_writes_the_summary_then_closes_the_backend(tmp_path, monkeypatch):
    fake = _Fake()
    monkeypatch.setattr(stage_mod, "build_backend", lambda *a: fake)
    served = stage_mod.StageBackend("sample", SimpleNamespace(backend="vllm", n=2), tmp_path)
    assert served.get() is fake and fake.closed == 0
    summary = served.finish()
    assert fake.closed == 1 and summary["this_run"] == {"requests": 3}
    assert json.loads((tmp_path / "summary.json").read_text())["capabilities"]["yes_no"] == "top_logprobs"
    assert served.finish()["this_run"] == {} and fake.closed == 1  # a second finish has nothing left to close


def test_hf_stages_build_and_close_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_mod, "build_backend", lambda *a: (_ for _ in ()).throw(AssertionError("built")))
    served = stage_mod.StageBackend("conquer", SimpleNamespace(backend="hf"), tmp_path)
    assert served.finish() is None and not (tmp_path / "summary.json").exists()
