"""The ``vllm`` backend's request building and output mapping, without vLLM (a CUDA package).

Outputs: ``tests/data/vllm/*.json`` hold vLLM results in the shape ``vllm/outputs.py`` and
``vllm/logprobs.py`` define them (commits in each file's ``_source``); they are hand-built in
that shape (vLLM cannot run here), loaded into stand-in classes with the same attribute names,
and checked against hand-computed expectations. Requests: a stand-in ``vllm`` module whose
``SamplingParams`` is a dataclass with the real field names and whose ``LLM`` records its
arguments and answers from the fixtures. The engine itself runs only in ``bench/gpu_smoke.sh``.
"""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rlaifv.backends.base import BackendError, Decoding, VLLMOptions, YesNo
from rlaifv.backends.vllm_engine import (
    OUTSIDE_TOP_K_NAME,
    VLLMBackend,
    VLLMOutputError,
    answer_logprobs_from_output,
    as_yes_no,
    candidate_from_output,
    import_vllm,
    llm_kwargs,
    prompt_token_ids,
    sampling_params_for_candidates,
    yes_no_from_output,
    yes_no_from_position,
)
from rlaifv.models.yesno import YesNoIds

DATA = Path(__file__).parent / "data" / "vllm"


# ----------------------------------------------------------------------------- stand-ins with vLLM's attribute names


@dataclass
class Logprob:  # vllm/logprobs.py
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm/outputs.py
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm/outputs.py (a plain class there; same attributes)
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int | None = None


@dataclass
class FlatLogprobs:  # vllm/logprobs.py: positions flattened into lists; an appended None is an empty position
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    items: list[tuple[int, Logprob]] = field(default_factory=list)

    def append(self, position: dict[int, Logprob] | None) -> None:
        self.start.append(len(self.items))
        self.items += list((position or {}).items())
        self.end.append(len(self.items))

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> dict[int, Logprob]:
        return dict(self.items[self.start[i] : self.end[i]])


def _position(d: dict | None) -> dict[int, Logprob] | None:
    return None if d is None else {int(k): Logprob(**v) for k, v in d.items()}


def load_outputs(name: str) -> tuple[dict, list[RequestOutput]]:
    raw = json.loads((DATA / name).read_text())
    outs = []
    for r in raw["request_outputs"]:
        comps = [CompletionOutput(**{**c, "logprobs": None if c["logprobs"] is None else [_position(p) for p in c["logprobs"]]})
                 for c in r["outputs"]]
        plp = None if r["prompt_logprobs"] is None else [_position(p) for p in r["prompt_logprobs"]]
        outs.append(RequestOutput(**{**r, "outputs": comps, "prompt_logprobs": plp}))
    return raw, outs


@dataclass
class SamplingParams:  # vllm/sampling_params.py: the fields this backend sets, real names and defaults
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True


@dataclass
class FakeLLM:
    """Records ``LLM(**kwargs)`` and every ``generate`` call; answers with queued outputs."""

    kwargs: dict[str, Any]
    calls: list = field(default_factory=list)
    queue: list = field(default_factory=list)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, **kw):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts), "one SamplingParams per prompt"
        self.calls.append((prompts, sampling_params))
        return self.queue.pop(0)


def fake_vllm() -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.SamplingParams = SamplingParams
    mod.LLM = lambda **kw: FakeLLM(kw)
    return mod


class FakeTokenizer:
    """Decodes ids through a small vocabulary; ids >= 90 or == 2 are special (skipped)."""

    vocab = {50: "a", 51: "red", 52: "circle", 53: "blue", 54: "square"}

    def decode(self, ids, skip_special_tokens=False):
        return " " + " ".join(self.vocab.get(i, f"<{i}>") for i in ids if not (skip_special_tokens and (i == 2 or i >= 90))) + " "


# ----------------------------------------------------------------------------- conquer: p_yes / p_no from top-k


def test_conquer_mapping_sums_yes_no_ids_and_reports_missing():
    raw, outs = load_outputs("conquer_topk.json")
    ids = YesNoIds(tuple(raw["yes_ids"]), tuple(raw["no_ids"]))
    r = [yes_no_from_output(o, ids) for o in outs]
    # 0: all four ids returned: Yes .6 + yes .1, No .2 + no .05
    assert r[0].p_yes == pytest.approx(0.7) and r[0].p_no == pytest.approx(0.25)
    assert r[0].complete and r[0].verdict_certain and r[0].returned == 5
    # 1: "no" (22) outside the top-k: not guessed, listed; 0.5 >= 0.4 + 0 whatever it was -> still certain
    assert (r[1].p_yes, r[1].p_no) == (pytest.approx(0.4), pytest.approx(0.5))
    assert r[1].missing_yes == () and r[1].missing_no == (22,) and r[1].floor == pytest.approx(0.04)
    assert r[1].verdict_certain
    # 2: both yes ids missing: p_yes 0, each at most the floor .05 -> at most .1 < .45: certain reject
    assert r[2].p_yes == 0.0 and r[2].missing_yes == (11, 12) and r[2].missing_no == (22,)
    assert r[2].verdict_certain
    # 3: Yes .3 vs No .28, yes / no missing with floor .1: "no" could reach .38 > .3 -> uncertain
    assert r[3].p_yes == pytest.approx(0.3) and r[3].p_no == pytest.approx(0.28) and r[3].missing_no == (22,)
    assert not r[3].verdict_certain
    # the interface's YesNo names a word only when none of its ids came back (as the openai backend does)
    assert [as_yes_no(x, ids).outside_top_k for x in r] == [(), (), ("yes",), ()]
    assert as_yes_no(r[0], ids) == YesNo(pytest.approx(0.7), pytest.approx(0.25), ())


def test_conquer_matches_full_vocabulary_read_out_on_a_real_model():
    """vLLM's top-k dict built from the sandbox labeler's real logits gives the ``hf`` p_yes / p_no
    when the yes/no ids are inside the top-k, and reports them when k is too small."""
    import torch
    from PIL import Image

    from rlaifv.models.chat import collate
    from rlaifv.models.load import load_vlm
    from rlaifv.models.yesno import p_yes_no, yes_no_ids

    model, processor = load_vlm("sandbox:labeler-direct")
    ids = yes_no_ids(processor)
    batch = collate(processor, [Image.new("RGB", (96, 96), "white")], ["Is there a red circle in the image?"], padding_side="left")
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :].float()
    y, n = p_yes_no(logits, ids)
    logp = torch.log_softmax(logits[0], -1)
    wanted = set(ids.yes) | set(ids.no)
    rank = {int(t): r + 1 for r, t in enumerate(logp.argsort(descending=True).tolist())}
    k = max(rank[t] for t in wanted)  # the smallest k that returns all four

    def position(k: int) -> dict[int, Logprob]:  # what append_logprobs_for_next_position builds: sampled token, then top-k
        top = logp.topk(k).indices.tolist()
        return {int(t): Logprob(float(logp[t]), rank[int(t)], None) for t in [top[0]] + top}

    full = yes_no_from_position(position(k), ids)
    assert full.complete and full.p_yes == pytest.approx(float(y), abs=1e-6) and full.p_no == pytest.approx(float(n), abs=1e-6)
    cut = yes_no_from_position(position(k - 1), ids)
    assert not cut.complete and set(cut.missing_yes + cut.missing_no) == {t for t in wanted if rank[t] == k}


def test_conquer_output_without_logprobs_is_an_error():
    _, outs = load_outputs("sample_seeded.json")
    with pytest.raises(VLLMOutputError, match="log-probs"):
        yes_no_from_output(outs[0], YesNoIds((11,), (21,)))


# ----------------------------------------------------------------------------- best-of-N: prompt log-probs


def test_prompt_logprobs_alignment_first_entry_none():
    raw, outs = load_outputs("bestofn_prompt_logprobs.json")
    o = outs[0]
    assert o.prompt_logprobs[0] is None and len(o.prompt_logprobs) == len(o.prompt_token_ids)
    got = answer_logprobs_from_output(o, raw["answer_token_ids"])
    assert got == pytest.approx([math.log(0.25), math.log(0.125), math.log(0.5)])  # the answer token's own entry, not the top-1
    with pytest.raises(VLLMOutputError, match="does not end with"):
        answer_logprobs_from_output(o, [61, 60, 2])
    with pytest.raises(VLLMOutputError, match="does not end with"):  # the whole prompt: its first token has no log-prob
        answer_logprobs_from_output(o, o.prompt_token_ids)
    flat = FlatLogprobs()  # vLLM's flattened container: same answer
    for position in o.prompt_logprobs:
        flat.append(position)
    o.prompt_logprobs = flat
    assert flat[0] == {} and answer_logprobs_from_output(o, raw["answer_token_ids"]) == pytest.approx(got)
    o.prompt_logprobs = [flat[i] for i in range(len(flat) - 1)]
    with pytest.raises(VLLMOutputError, match="prompt log-prob entries"):
        answer_logprobs_from_output(o, raw["answer_token_ids"])


# ----------------------------------------------------------------------------- sampling


def test_candidates_decode_token_ids_and_flag_truncation():
    raw, outs = load_outputs("sample_seeded.json")
    got = [candidate_from_output(o, FakeTokenizer()) for o in outs]
    assert [g.text for g in got] == ["a red circle", "a blue square a red circle", "a circle"]
    assert [g.truncated for g in got] == [False, True, False]  # finish_reason "length" = hit max_tokens
    outs[0].outputs.append(outs[1].outputs[0])
    with pytest.raises(VLLMOutputError, match="expected 1 completion"):
        candidate_from_output(outs[0], FakeTokenizer())


def test_one_sampling_params_per_candidate_with_its_own_seed():
    seeds = [7, 8, (1 << 63) - 1]  # candidate seeds are 63-bit (stages/sample.py::candidate_seed); sent unchanged
    params = sampling_params_for_candidates(fake_vllm(), seeds, [Decoding(0.7, 0.9, 64)] * 3, [2, 0])
    assert [p.seed for p in params] == seeds
    assert {(p.n, p.temperature, p.top_p, p.max_tokens, tuple(p.stop_token_ids)) for p in params} == {(1, 0.7, 0.9, 64, (2, 0))}
    confounded = sampling_params_for_candidates(fake_vllm(), [1, 2], [Decoding(0.5, 1.0, 8), Decoding(1.0, 1.0, 8)], [2])
    assert [p.temperature for p in confounded] == [0.5, 1.0]
    with pytest.raises(ValueError):
        sampling_params_for_candidates(fake_vllm(), [1, 2], [Decoding(0.7, 1.0, 8)], [2])


# ----------------------------------------------------------------------------- prompts as the hf backend builds them


@pytest.fixture(scope="module")
def llava():
    """A LLaVA-1.5 built from config (SentencePiece tokenizer with BOS, ``USER: <image>\\n... ASSISTANT:``)."""
    from rlaifv.compat.zoo_llava import build_llava_1_5

    return build_llava_1_5()


def _collapse(ids: list[int], image_id: int) -> list[int]:
    return [t for i, t in enumerate(ids) if t != image_id or i == 0 or ids[i - 1] != image_id]


def test_prompt_ids_are_what_the_hf_backend_feeds(llava):
    from PIL import Image

    from rlaifv.models.chat import encode_prompt

    _, processor = llava
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    q = "Is there a cat in the image?"
    ours = prompt_token_ids(processor, q)
    hf = encode_prompt(processor, Image.new("RGB", (40, 40)), q)["input_ids"][0].tolist()
    assert hf.count(image_id) > 1 and ours.count(image_id) == 1  # vLLM expands the placeholder itself
    assert _collapse(hf, image_id) == ours and ours.count(processor.tokenizer.bos_token_id) == 1


def test_backend_builds_requests_and_maps_outputs(llava, tmp_path):
    from PIL import Image

    from rlaifv.models.chat import answer_ids
    from rlaifv.models.template import generation_stop_ids

    _, processor = llava
    (tmp_path / "m").mkdir()
    opts = VLLMOptions(tensor_parallel_size=2, top_logprobs=5)
    eng = VLLMBackend(tmp_path / "m", opts, stage="conquer", out=tmp_path / "out", processor=processor, vllm_module=fake_vllm())
    kw = eng.llm.kwargs
    assert kw["tensor_parallel_size"] == 2 and kw["enable_prefix_caching"] is True and kw["max_logprobs"] == 20
    assert kw["limit_mm_per_prompt"] == {"image": 1} and kw["model"] == str(tmp_path / "m")
    img = Image.new("RGB", (40, 40))

    # sample: 2 prompts x 3 candidates in ONE generate call, one SamplingParams per candidate
    _, sample_outs = load_outputs("sample_seeded.json")
    eng.llm.queue.append(sample_outs * 2)
    eng.tokenizer = FakeTokenizer()
    got = eng.sample([img, img], ["q one", "q two"], [[1, 2, 3], [4, 5, 6]], [Decoding(0.7, 1.0, 6)] * 3)
    prompts, params = eng.llm.calls[-1]
    assert [p.seed for p in params] == [1, 2, 3, 4, 5, 6] and all(p.n == 1 and p.max_tokens == 6 for p in params)
    assert params[0].stop_token_ids == generation_stop_ids(processor)
    assert prompts[0]["prompt_token_ids"] == prompt_token_ids(processor, "q one") and prompts[0]["multi_modal_data"] == {"image": img}
    assert prompts[3]["prompt_token_ids"] == prompt_token_ids(processor, "q two")
    assert [[g.text for g in row] for row in got] == [["a red circle", "a blue square a red circle", "a circle"]] * 2

    # conquer: greedy, one token, top-k log-probs; groups keep their order
    raw, conquer_outs = load_outputs("conquer_topk.json")
    eng.llm.queue.append(conquer_outs)
    eng._yes_no_ids = YesNoIds(tuple(raw["yes_ids"]), tuple(raw["no_ids"]))  # the fixture's ids, not this tokenizer's
    res = eng.yes_no(img, ["a?", "b?", "c?", "d?"])
    prompts, params = eng.llm.calls[-1]
    assert {(p.max_tokens, p.logprobs, p.temperature) for p in params} == {(1, 5, 0.0)}
    assert prompts[1]["prompt_token_ids"] == prompt_token_ids(processor, "b?")
    assert [y.p_yes for y in res] == pytest.approx([0.7, 0.4, 0.0, 0.3]) and res[2].outside_top_k == ("yes",)
    c = eng.counts()
    assert (c["questions"], c["yes_outside_top_k"], c["no_outside_top_k"], c["yes_no_ids_outside_top_k"], c["verdict_uncertain"]) == (4, 1, 0, 3, 1)
    assert "1 of 4 claim verdicts could change" in c["warning"] and eng.capabilities().notes == (c["warning"],)
    listed = [json.loads(line) for line in (tmp_path / "out" / OUTSIDE_TOP_K_NAME).read_text().splitlines()]
    assert [(r["question"], r["missing_no"], r["verdict_certain"]) for r in listed] == [("b?", [22], True), ("c?", [22], True), ("d?", [22], False)]

    # best-of-N: prompt + answer ids (answer + end of turn), prompt_logprobs; the tail is checked
    answer = "Yes, a cat."
    full = prompt_token_ids(processor, "q?") + answer_ids(processor, answer)
    plp = [None] + [{t: Logprob(-0.5, 1)} for t in full[1:]]
    eng.llm.queue.append([RequestOutput("30", None, full, plp, [], True)])
    lps = eng.answer_logprobs(img, "q?", [answer])
    prompts, params = eng.llm.calls[-1]
    assert prompts[0]["prompt_token_ids"] == full and params[0].prompt_logprobs == 0 and params[0].max_tokens == 1
    assert lps == [[-0.5] * len(answer_ids(processor, answer))]
    eng.close()
    assert eng.llm is None and eng.counts()["generate_calls"] == 3 and eng.counts()["requests"] == 6 + 4 + 1


def test_default_yes_no_ids_are_the_labelers_own(llava, tmp_path):
    from rlaifv.models.yesno import yes_no_ids
    from rlaifv.stages.conquer import ConquerConfig

    _, processor = llava
    eng = VLLMBackend(tmp_path, processor=processor, vllm_module=fake_vllm())
    assert eng.yes_no_ids() == yes_no_ids(processor)
    cfg = ConquerConfig(model="m", yes_tokens=["▁Yes"], no_tokens=["▁No"])
    eng = VLLMBackend(tmp_path, cfg=cfg, processor=processor, vllm_module=fake_vllm())
    tok = processor.tokenizer
    assert eng.yes_no_ids() == YesNoIds((tok.convert_tokens_to_ids("▁Yes"),), (tok.convert_tokens_to_ids("▁No"),))


def test_adapter_folders_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="PEFT adapter"):
        VLLMBackend(tmp_path, processor=object(), vllm_module=fake_vllm())


def test_missing_vllm_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BackendError) as e:
        import_vllm()
    assert "pip install rlaifv[vllm]" in str(e.value) and "\n" not in str(e.value)


def test_engine_arguments():
    kw = llm_kwargs("m", VLLMOptions())
    assert (kw["max_logprobs"], kw["tensor_parallel_size"], kw["enable_prefix_caching"], "max_model_len" in kw) == (20, 1, True, False)
    kw = llm_kwargs("m", VLLMOptions(top_logprobs=50, max_model_len=4096, enable_prefix_caching=False))
    assert (kw["max_logprobs"], kw["max_model_len"], kw["enable_prefix_caching"]) == (50, 4096, False)
