"""``--backend vllm`` against ``--backend hf`` on a real model, with a stand-in engine.

vLLM is a CUDA package and cannot run here, so ``vllm.LLM`` is replaced by :class:`HFEngine`,
which answers each request the way vLLM's offline engine does (``vllm/outputs.py``,
``vllm/logprobs.py``: the prompt's image placeholder expanded by the model's processor, raw
log-softmax log-probs, top-k plus the sampled token, prompt log-probs starting with ``None``,
seeded sampling per request, stop at the template's stop ids or the model's EOS) but computes
them with the Hugging Face model. What this checks is everything of the backend except vLLM's
kernels: the prompts it builds are the ones the ``hf`` path feeds (token for token), seeds reach
the right candidates, outputs map back to the same records, and the stage wiring
(``rlaifv sample`` / ``rlaifv conquer --backend vllm``) works. The real engine runs in ``bench/gpu_smoke.sh``.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from PIL import Image

from rlaifv.backends.base import Decoding
from rlaifv.backends.vllm_engine import VLLMBackend
from test_backend_vllm import CompletionOutput, Logprob, RequestOutput, SamplingParams

MODEL = "sandbox:labeler-direct"


class HFEngine:
    """``vllm.LLM`` stand-in computing each request with the HF model (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        from rlaifv.models.load import load_vlm

        self.kwargs = kwargs
        self.model, self.processor = load_vlm(kwargs["model"])
        self.tok = self.processor.tokenizer
        self.calls = 0

    def _encode(self, prompt: dict) -> dict:
        from rlaifv.models.chat import _images_arg

        text = self.tok.decode(prompt["prompt_token_ids"])  # the processor expands the image placeholder, as vLLM's does
        return dict(self.processor(text=[text], images=_images_arg(self.processor, prompt["multi_modal_data"]["image"]),
                                   return_tensors="pt", add_special_tokens=False))

    @torch.no_grad()
    def generate(self, prompts, sampling_params, *, use_tqdm=True):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        self.calls += 1
        return [self._one(str(i), p, sp) for i, (p, sp) in enumerate(zip(prompts, sampling_params))]

    def _one(self, rid: str, prompt: dict, sp: SamplingParams) -> RequestOutput:
        enc = self._encode(prompt)
        ids = enc["input_ids"][0].tolist()
        if sp.prompt_logprobs is not None:
            lp = torch.log_softmax(self.model(**enc).logits[0].float(), -1)
            plp = [None] + [{ids[i]: Logprob(float(lp[i - 1, ids[i]]), None, None)} for i in range(1, len(ids))]
            return RequestOutput(rid, None, ids, plp, [CompletionOutput(0, "", [], None, None, "length")], True)
        if sp.logprobs is not None:
            lp = torch.log_softmax(self.model(**enc).logits[0, -1].float(), -1)
            order = lp.argsort(descending=True).tolist()
            pos = {t: Logprob(float(lp[t]), order.index(t) + 1, None) for t in [order[0]] + order[: sp.logprobs]}
            return RequestOutput(rid, None, ids, None, [CompletionOutput(0, "", [order[0]], None, [pos], "length")], True)
        return self._sample(rid, enc, ids, sp)

    def _sample(self, rid: str, enc: dict, ids: list[int], sp: SamplingParams) -> RequestOutput:
        from transformers import LogitsProcessorList

        from rlaifv.stages.sample import SeededSampler

        eos = self.model.generation_config.eos_token_id  # vLLM adds the model's EOS to the request's stop ids
        stops = list(dict.fromkeys(sp.stop_token_ids + ([eos] if isinstance(eos, int) else list(eos or []))))
        kw = {"logits_processor": LogitsProcessorList([SeededSampler([sp.seed], sp.temperature, sp.top_p)])} if sp.temperature > 0 else {}
        gen = self.model.generate(**enc, do_sample=False, max_new_tokens=sp.max_tokens, eos_token_id=stops,
                                  pad_token_id=self.tok.pad_token_id, **kw)
        new = gen[0, len(ids):].tolist()
        cut = next((i + 1 for i, t in enumerate(new) if t in stops), None)
        new = new[:cut] if cut else new
        out = CompletionOutput(0, self.tok.decode(new, skip_special_tokens=True), new, None, None, "stop" if cut else "length")
        return RequestOutput(rid, None, ids, None, [out], True)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams = SamplingParams
    mod.LLM = HFEngine
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


@pytest.fixture(scope="module")
def images():
    a = Image.new("RGB", (96, 96), "white")
    b = Image.new("RGB", (96, 96), "white")
    b.paste((220, 30, 30), (10, 10, 50, 50))
    return [a, b]


@pytest.fixture(scope="module")
def hf():
    from rlaifv.backends.hf import HFBackend
    from rlaifv.models.load import load_vlm

    return HFBackend(*load_vlm(MODEL))


def test_yes_no_and_answer_logprobs_equal_the_hf_backend(fake_vllm, hf, images, tmp_path):
    vl = VLLMBackend(MODEL, stage="conquer", out=tmp_path)
    questions = ["Is there a red circle in the image? Please answer yes or no.", "Is there a blue square in the image?"]
    for image in images:
        for h, v in zip(hf.yes_no(image, questions), vl.yes_no(image, questions)):
            assert v.outside_top_k == () and v.p_yes == pytest.approx(h.p_yes, abs=1e-5) and v.p_no == pytest.approx(h.p_no, abs=1e-5)
    answers = ["There is a large red circle at the top left.", "There is nothing."]
    for h, v in zip(hf.answer_logprobs(images[1], "Describe the image in detail.", answers),
                    vl.answer_logprobs(images[1], "Describe the image in detail.", answers)):
        assert len(h) == len(v) and v == pytest.approx(h, abs=1e-4)
    # every question here has some spelling variant ("yes" after "Yes", other spacings) outside the top 20, carrying
    # under 1e-5 of mass: listed per question, and no verdict could flip
    c = vl.counts()
    assert (c["questions"], c["yes_outside_top_k"], c["no_outside_top_k"], c["verdict_uncertain"]) == (4, 0, 0, 0)
    assert "warning" not in c and vl.capabilities().notes == ()


def test_greedy_and_seeded_sampling_equal_the_hf_backend(fake_vllm, hf, images, tmp_path):
    vl = VLLMBackend(MODEL, stage="sample", out=tmp_path)
    qs = ["Describe the image in detail."] * 2
    greedy = [Decoding(0.0, 1.0, 12)]
    assert [[g.text for g in row] for row in vl.sample(images, qs, [[0], [0]], greedy)] == \
           [[g.text for g in row] for row in hf.sample(images, qs, [[0], [0]], greedy)]
    seeds = [[11, 12], [21, 22]]
    sampled = [Decoding(0.9, 1.0, 8)] * 2
    got, want = vl.sample(images, qs, seeds, sampled), hf.sample(images, qs, seeds, sampled)
    assert got == want and vl.llm.calls == 2  # one generate call per backend call, all candidates in it
    assert len({g.text for row in got for g in row}) > 1  # seeds differ, so do (some) answers


def test_sample_stage_with_backend_vllm_writes_the_hf_records(fake_vllm, tmp_path):
    from photos import cli_ok, photo_prompts

    from rlaifv.records import Candidate
    from rlaifv.store import read_records

    prompts = photo_prompts(tmp_path, n=2)
    common = ["sample", "--prompts", str(prompts), "--model", MODEL, "--n", "2", "--max-new-tokens", "8", "--seed", "5"]
    cli_ok(common + ["--out", str(tmp_path / "hf")])
    cli_ok(common + ["--backend", "vllm", "--out", str(tmp_path / "vllm")])

    def records(name: str) -> list[tuple]:
        return sorted((c.id, c.seed, c.text, c.decoding["truncated"]) for c in read_records(tmp_path / name, Candidate))

    assert records("vllm") == records("hf") and len(records("hf")) == 4
    assert {c.decoding.get("backend") for c in read_records(tmp_path / "vllm", Candidate)} == {"vllm"}


def test_conquer_stage_with_backend_vllm_writes_the_hf_scores(fake_vllm, tmp_path):
    import json

    from photos import cli_ok, photo_prompts

    from rlaifv.records import ClaimScore, PolarQuestion
    from rlaifv.store import RecordStore, read_records

    prompts = photo_prompts(tmp_path, n=2)
    claims = ["There is a red circle.", "There is a person.", "There is no square."]
    with RecordStore(tmp_path / "questions", PolarQuestion) as store:
        store.write([PolarQuestion(f"{pid}#0/{j}", c, f"{c[:-1].replace('There is', 'Is there')}? Please answer yes or no.")
                     for pid in ("hopper", "hopper-top") for j, c in enumerate(claims)])
    common = ["conquer", "--questions", str(tmp_path / "questions"), "--prompts", str(prompts), "--model", MODEL]
    cli_ok(common + ["--out", str(tmp_path / "hf")])
    cli_ok(common + ["--backend", "vllm", "--out", str(tmp_path / "vllm")])

    def scores(name: str) -> dict[str, tuple[float, float]]:
        return {s.claim_id: (s.p_yes, s.p_no) for s in read_records(tmp_path / name, ClaimScore)}

    hf, vl = scores("hf"), scores("vllm")
    assert sorted(hf) == sorted(vl) and len(hf) == 6
    assert all(vl[k] == pytest.approx(hf[k], abs=1e-5) for k in hf)
    summary = json.loads((tmp_path / "vllm" / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["this_run"]["questions"] == 6 and summary["this_run"]["verdict_uncertain"] == 0
    assert summary["outside_top_k"]["count"] == 0 and summary["warnings"] == []
