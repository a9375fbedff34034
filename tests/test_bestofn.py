"""Best-of-N with the RLAIF-V reward: formulas, selection, shared-prefix scoring, LoRA loading, CLI, sweep.

Everything runs on the session's tiny sandbox model (``tiny_sandbox_model``) and a LoRA
adapter made here over it with peft (random, non-zero weights, so the aligned model differs
from its reference).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlaifv.config import ConfigError, load_config
from rlaifv.models.answers import answer_logprobs, answer_logprobs_naive
from rlaifv.models.load import ModelLoadError, adapter_base, load_vlm, resolve_model_path, unwrap_peft
from rlaifv.records import Candidate, Prompt, RecordError
from rlaifv.runner import StageInputError
from rlaifv.sandbox.bestofn_sweep import aggregate_seeds, chosen_at, metrics_by_n
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World
from rlaifv.stages import bestofn as bon
from rlaifv.stages.bestofn import (BestOfNConfig, BestOfNModels, BestOfNResult, ScoringModel, candidate_scores,
                                   implicit_reward, labeler_score, mean_logprob, pick_best, role_logprobs)
from rlaifv.store import read_records

torch.set_num_threads(1)  # a training job shares the CPU

QUESTION = "Describe the image in detail."
ANSWERS = ["There is a large red circle at the top left.",
           "There is a small blue square in the center. There is a green star at the bottom right.", "No."]


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


# ----------------------------------------------------------------------------- formulas and selection


def test_reward_formulas_by_hand():
    la, lr = _t(-1.0, -2.0, -0.5), _t(-2.0, -2.5, -1.0)  # differences 1.0, 0.5, 0.5: sum 2.0, T = 3
    assert implicit_reward(la, lr, beta=0.1) == pytest.approx(0.1 * 2.0 / 3)
    assert implicit_reward(la, lr, beta=0.1, length_normalised=False) == pytest.approx(0.2)
    assert implicit_reward(la, la, beta=0.5) == 0.0
    assert mean_logprob(_t(-1.0, -2.0, -3.0)) == pytest.approx(-2.0)
    assert labeler_score([True, False, True]) == -2.0 and labeler_score([]) == 0.0
    # length normalisation changes the winner: short (T=1, sum 0.3) vs long (T=4, sum 0.8)
    short = candidate_scores("p#0", ["rlaifv-reward", "dpo-reward"], {"aligned": _t(-0.1), "reference": _t(-0.4)}, None, 1.0)
    long = candidate_scores("p#1", ["rlaifv-reward", "dpo-reward"], {"aligned": _t(-0.1, -0.1, -0.1, -0.1), "reference": _t(-0.3, -0.3, -0.3, -0.3)}, None, 1.0)
    assert short["rlaifv-reward"] == pytest.approx(0.3) and long["rlaifv-reward"] == pytest.approx(0.2)
    assert short["dpo-reward"] == pytest.approx(0.3) and long["dpo-reward"] == pytest.approx(0.8)
    assert pick_best([short["rlaifv-reward"], long["rlaifv-reward"]]) == 0
    assert pick_best([short["dpo-reward"], long["dpo-reward"]]) == 1


def test_reward_aggregates_by_hand():
    """The four aggregates of the reference code's reward pipeline, on one answer: log-ratios 1.0, -0.5, 0.25."""
    from rlaifv.stages.rewards import reward_aggregate
    la, lr = _t(-1.0, -2.0, -0.5), _t(-2.0, -1.5, -0.75)
    assert reward_aggregate(la, lr, 0.1, "sum") == pytest.approx(0.1 * 0.75)
    assert reward_aggregate(la, lr, 0.1, "mean") == pytest.approx(0.1 * 0.25)
    assert reward_aggregate(la, lr, 0.1, "min") == pytest.approx(-0.05)
    assert reward_aggregate(la, lr, 0.1, "last") == pytest.approx(0.025)
    with pytest.raises(ValueError, match="median"):
        reward_aggregate(la, lr, 0.1, "median")
    # min and last pick differently from the mean: a = one bad token, b = uniformly mild
    a = {"aligned": _t(-0.1, -0.1, -3.0, -0.1), "reference": _t(-1.0, -1.0, -1.0, -1.0)}  # ratios .9 .9 -2 .9: mean .175
    b = {"aligned": _t(-0.9, -0.9, -0.9, -0.9), "reference": _t(-1.0, -1.0, -1.0, -1.0)}  # ratios .1 x4: mean .1
    names = ["rlaifv-reward", "reward-min", "reward-last"]
    sa, sb = candidate_scores("p#0", names, a, None, 1.0), candidate_scores("p#1", names, b, None, 1.0)
    assert sa == pytest.approx({"rlaifv-reward": 0.175, "reward-min": -2.0, "reward-last": 0.9})
    assert sb == pytest.approx({"rlaifv-reward": 0.1, "reward-min": 0.1, "reward-last": 0.1})
    assert [pick_best([sa[n], sb[n]]) for n in names] == [0, 1, 0]


def test_bad_log_probs_name_the_candidate():
    with pytest.raises(FloatingPointError, match=r"candidate 'img7#3'.*non-finite"):
        candidate_scores("img7#3", ["rlaifv-reward"], {"aligned": _t(-1.0, float("nan")), "reference": _t(-1.0, -1.0)}, None, 0.1)
    with pytest.raises(FloatingPointError, match="img7#4"):
        candidate_scores("img7#4", ["perplexity"], {"policy": _t(float("-inf"))}, None, 0.1)
    with pytest.raises(ValueError, match=r"img7#5.*different tokens"):
        candidate_scores("img7#5", ["dpo-reward"], {"aligned": _t(-1.0), "reference": _t(-1.0, -2.0)}, None, 0.1)
    with pytest.raises(ValueError, match=r"img7#6.*reference"):
        candidate_scores("img7#6", ["dpo-reward"], {"aligned": _t(-1.0)}, None, 0.1)


def test_selection_ties_go_to_the_lowest_index():
    assert pick_best([0.0, 0.0, 0.0]) == 0
    assert pick_best([-3.0, 1.5, 1.5, -1.0]) == 1
    assert pick_best([-2.0]) == 0
    with pytest.raises(ValueError, match="candidate 1 has a non-finite score"):
        pick_best([0.1, float("nan")])
    with pytest.raises(ValueError, match="no candidates"):
        pick_best([])


def _result(pid: str, texts: list[str], scores: dict[str, list[float]], scorer: str = "labeler") -> BestOfNResult:
    rows = [{"candidate_id": f"{pid}#{k}", "sample_index": k, "seed": k, "text": t, "scores": {s: v[k] for s, v in scores.items()}}
            for k, t in enumerate(texts)]
    best = pick_best(scores[scorer])
    return BestOfNResult(prompt_id=pid, question=QUESTION, scorer=scorer, chosen_index=best, chosen=texts[best], candidates=rows)


def test_record_round_trip_and_validation():
    r = _result("s1", ["a", "b", "c"], {"labeler": [-2.0, 0.0, 0.0], "perplexity": [-0.1, -0.5, -0.2]})
    back = BestOfNResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r and back.chosen_index == 1 and back.scores("perplexity") == [-0.1, -0.5, -0.2]
    bad = r.to_dict() | {"chosen_index": 0, "chosen": "a"}
    with pytest.raises(RecordError, match="best_of_n 's1'.*not the best"):
        BestOfNResult.from_dict(bad)
    with pytest.raises(RecordError, match="out of range"):
        BestOfNResult.from_dict(r.to_dict() | {"chosen_index": 5})


def test_first_n_selection_and_seed_aggregate():
    import random

    from rlaifv.sandbox.tasks import describe, hallucinated_object, sentence

    world = World()
    scenes = [world.scene(0, "test"), world.scene(1, "test")]
    good = [describe(s.objects) for s in scenes]
    hallu = [g + " " + sentence(hallucinated_object(s, random.Random(0), world.config)) for g, s in zip(good, scenes)]
    # candidate 0 hallucinates; the labeler prefers candidate 1 (ties elsewhere go to index 0)
    results = [_result(f"p{i}", [hallu[i], good[i]], {"labeler": [-1.0, 0.0], "perplexity": [0.0, 0.0]}) for i in range(2)]
    assert chosen_at(results[0], "labeler", 1) == hallu[0] and chosen_at(results[0], "labeler", 2) == good[0]
    assert chosen_at(results[0], "perplexity", 2) == hallu[0]  # a tie keeps candidate 0
    with pytest.raises(ValueError, match="N = 3"):
        chosen_at(results[0], "labeler", 3)
    by_n = metrics_by_n(results, scenes, ["labeler", "perplexity"], [1, 2])
    assert by_n["labeler"][1] == by_n["perplexity"][1] == by_n["perplexity"][2]
    assert by_n["labeler"][2]["chair_i"] == 0.0 < by_n["labeler"][1]["chair_i"]
    agg = aggregate_seeds({0: by_n, 1: by_n})
    assert agg["labeler"][2]["chair_i"] == {"mean": 0.0, "std": 0.0}


def test_config_checks():
    cfg = load_config(BestOfNConfig, None, {"also_score": ["labeler", "rlaifv-reward"], "sample": {"n": 3}})
    assert cfg.scorers == ("rlaifv-reward", "labeler") and cfg.sample.n == 3
    with pytest.raises(ConfigError, match="'nope'"):
        load_config(BestOfNConfig, None, {"scorer": "nope"})
    with pytest.raises(ConfigError, match="sweep"):
        load_config(BestOfNConfig, None, {"sweep": {"ns": [0, 2]}})


# ----------------------------------------------------------------------------- models: LoRA adapter, shared prefix


@pytest.fixture(scope="module")
def lora_adapter(tiny_sandbox_model, tmp_path_factory) -> Path:
    """A LoRA adapter (q_proj, v_proj of the text model, random non-zero weights) over the tiny model, saved."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_vlm(tiny_sandbox_model)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*text_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_sandbox_model)
    return out


@pytest.fixture(scope="module")
def image():
    return render(World().scene(0, "test"))


def _sums(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.double().sum() for x in xs])


def test_lora_adapter_loads_and_its_reference_is_the_base(tiny_sandbox_model, lora_adapter, image):
    from peft import PeftModel

    base, proc = load_vlm(tiny_sandbox_model)
    model, aproc = load_vlm(lora_adapter)
    assert isinstance(model, PeftModel) and not (lora_adapter / "processor_config.json").exists()
    assert aproc.tokenizer("a red circle")["input_ids"] == proc.tokenizer("a red circle")["input_ids"]  # the base's processor
    inner, peft = unwrap_peft(model)
    assert peft is model and unwrap_peft(base) == (base, None)
    base_lp = _sums(answer_logprobs(base, proc, image, QUESTION, ANSWERS))
    aligned_lp = _sums(answer_logprobs(inner, aproc, image, QUESTION, ANSWERS))
    with model.disable_adapter():
        ref_lp = _sums(answer_logprobs(inner, aproc, image, QUESTION, ANSWERS))
    assert torch.allclose(ref_lp, base_lp, atol=1e-5)
    assert (aligned_lp - base_lp).abs().max() > 1e-3  # the adapter does something


def test_adapter_base_resolution(tmp_path, tiny_sandbox_model):
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "sandbox:policy"}))
    assert adapter_base(ad) == resolve_model_path("sandbox:policy")
    (tmp_path / "ad" / "base").symlink_to(tiny_sandbox_model)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))  # relative to the adapter
    assert adapter_base(ad) == ad / "base"
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/remote-model"}))
    with pytest.raises(ModelLoadError, match="never downloads"):
        load_vlm(ad)


def test_shared_prefix_equals_naive_forwards_for_policy_and_reference(tiny_sandbox_model, lora_adapter, image):
    """Per-answer summed log-probs, shared prefix vs one full forward per answer, within 1e-4."""
    base, proc = load_vlm(tiny_sandbox_model)
    inner, peft = unwrap_peft(load_vlm(lora_adapter)[0])
    models = BestOfNModels(policy=ScoringModel("base", base, proc), aligned=ScoringModel("lora", inner, proc, peft),
                           reference=ScoringModel("lora (adapter off)", inner, proc, peft, adapter_off=True))
    roles = ("policy", "aligned", "reference")
    naive = role_logprobs(models, roles, image, QUESTION, ANSWERS, BestOfNConfig(score_batch_size=2, share_prefix=False))
    for mode in ("batched", "packed"):
        shared = role_logprobs(models, roles, image, QUESTION, ANSWERS, BestOfNConfig(score_batch_size=2, prefix_mode=mode))
        for role in roles:
            assert [x.numel() for x in shared[role]] == [x.numel() for x in naive[role]]
            assert (_sums(shared[role]) - _sums(naive[role])).abs().max() < 1e-4, (mode, role)
    assert (_sums(naive["reference"]) - _sums(answer_logprobs_naive(base, proc, image, QUESTION, ANSWERS))).abs().max() < 1e-4
    assert shared["policy"] is not shared["reference"]  # two different (model, adapter state) keys ran


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_shared_prefix_equals_naive_on_other_architectures(arch):
    """LLaVA (1-D positions) and Qwen2-VL (3-D rotary positions), random tiny models with a sharpened output layer."""
    from conftest import small_corpus, tiny_cfg

    from rlaifv.models.tiny import build_tiny_vlm, train_tokenizer

    model, proc = build_tiny_vlm(tiny_cfg(arch), train_tokenizer(small_corpus(), arch, vocab_size=600), seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    img = render(World().scene(0, "test"), 32)
    naive = _sums(answer_logprobs_naive(model.eval(), proc, img, QUESTION, ANSWERS, batch_size=2))
    for mode, pack_tokens in (("batched", 2048), ("packed", 2048), ("packed", 10)):  # 10 tokens: several packed chunks
        shared = _sums(answer_logprobs(model, proc, img, QUESTION, ANSWERS, batch_size=2, mode=mode, pack_tokens=pack_tokens))
        assert (shared - naive).abs().max() < 1e-4, (mode, pack_tokens)


def test_bad_candidates_stop_with_the_record_named(tiny_sandbox_model, image, monkeypatch, tmp_path):
    model, proc = load_vlm(tiny_sandbox_model)
    broken = load_vlm(tiny_sandbox_model)[0]
    with torch.no_grad():
        broken.lm_head.weight[5] = float("nan")
    cfg = BestOfNConfig(reference="x", sample=bon.SampleConfig(n=2, max_new_tokens=4))
    models = BestOfNModels(policy=ScoringModel("p", model, proc), aligned=ScoringModel("a", broken, proc), reference=ScoringModel("r", model, proc))
    prompt = Prompt("scene-9", QUESTION, image="x.png")
    fake = [Candidate("scene-9", 0, 1, ANSWERS[0]), Candidate("scene-9", 1, 2, ANSWERS[1])]
    monkeypatch.setattr(bon, "sample", lambda *a, **k: list(fake))
    with pytest.raises(FloatingPointError, match=r"candidate 'scene-9#0'.*non-finite"):
        bon.best_of_n(models, [prompt], [image], cfg)
    fake[1] = Candidate("scene-9", 1, 2, "  ")
    with pytest.raises(ValueError, match=r"candidate 'scene-9#1': empty answer"):
        bon.best_of_n(models, [prompt], [image], cfg)
    image.save(tmp_path / "x.png")  # through the runner: one line naming the prompt and the candidate
    (tmp_path / "prompts.jsonl").write_text(json.dumps(prompt.to_dict()) + "\n")
    with pytest.raises(StageInputError, match=r"input 'scene-9': candidate 'scene-9#1': empty answer"):
        bon.run_best_of_n(cfg, [prompt], tmp_path / "prompts.jsonl", tmp_path / "out", models=models)


# ----------------------------------------------------------------------------- CLI end to end


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_cli_best_of_n_with_a_lora_reward_model(rlaifv_bin, tiny_sandbox_model, lora_adapter, tmp_path):
    out = tmp_path / "run"
    args = ["best-of-n", "--sandbox-prompts", "3", "--out", str(out), "--policy", str(tiny_sandbox_model), "--aligned", str(lora_adapter),
            "--labeler", str(tiny_sandbox_model), "--also-score", "dpo-reward,labeler,perplexity", "--n", "3",
            "--max-new-tokens", "12", "--temperature", "1.0", "--on-error", "skip"]
    proc = _run(rlaifv_bin + args, tmp_path)
    assert "chosen rlaifv-reward" in proc.stdout
    results = list(read_records(out / "results", BestOfNResult))
    rejected = (out / "results" / "rejects.jsonl").read_text().splitlines() if (out / "results" / "rejects.jsonl").exists() else []
    assert len(results) + len(rejected) == 3 and results
    for r in results:
        assert len(r.candidates) == 3 and r.models["reference"] == f"{lora_adapter} (adapter off)"
        scores = r.scores("rlaifv-reward")
        assert r.chosen_index == pick_best(scores) and r.chosen == r.candidates[r.chosen_index]["text"]
        for c in r.candidates:
            t = c["n_tokens"]["aligned"]
            assert c["scores"]["rlaifv-reward"] == pytest.approx(0.1 * (c["logp"]["aligned"] - c["logp"]["reference"]) / t, abs=1e-6)
            assert c["scores"]["dpo-reward"] == pytest.approx(0.1 * (c["logp"]["aligned"] - c["logp"]["reference"]), abs=1e-6)
            assert c["scores"]["labeler"] == -sum(c["rejected"]) and len(c["claims"]) == len(c["rejected"])
            assert math.isfinite(c["scores"]["perplexity"])
    manifest = json.loads((out / "results" / "manifest.json").read_text())
    assert manifest["stage"] == "best-of-n" and manifest["config"]["aligned"] == str(lora_adapter)
    assert json.loads((out / "summary.json").read_text())["prompts"] == len(results)
    bad = _run(rlaifv_bin + args + ["--beta", "0.2"], tmp_path, check=False)  # resuming with another config
    assert bad.returncode == 2 and "beta" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


def test_resume_writes_nothing_new_and_a_reference_is_required(tiny_sandbox_model, tmp_path):
    cfg = load_config(BestOfNConfig, None, {"sandbox_prompts": 2, "out": str(tmp_path / "r"), "scorer": "perplexity", "on_error": "skip",
                                            "sample": {"model": str(tiny_sandbox_model), "n": 2, "max_new_tokens": 8, "temperature": 1.0}})
    bon.best_of_n_run(cfg)
    shards = lambda: [f.read_text() for f in sorted((tmp_path / "r" / "results").glob("shard-*"))]  # noqa: E731
    before = shards()
    models = bon.load_models(cfg)
    prompts, path = bon.load_prompts(cfg)
    res = bon.run_best_of_n(cfg, prompts, path, tmp_path / "r" / "results", models=models)
    assert res.n_skipped_done == 2 and res.n_written == 0 and shards() == before
    with pytest.raises(ConfigError, match="reference"):
        bon.load_models(replace(cfg, scorer="rlaifv-reward"))


def test_cli_sweep_on_a_tiny_model(rlaifv_bin, tiny_sandbox_model, tmp_path):
    """Policy = aligned = reference: every reward is 0, so both reward scorers keep candidate 0 at every N."""
    out = tmp_path / "sweep"
    _run(rlaifv_bin + ["best-of-n", "--sweep", "--sandbox-prompts", "3", "--out", str(out), "--policy", str(tiny_sandbox_model),
                       "--reference", str(tiny_sandbox_model), "--labeler", str(tiny_sandbox_model), "--ns", "1,2", "--seeds", "0,1",
                       "--max-new-tokens", "12", "--temperature", "1.0", "--on-error", "skip"], tmp_path)
    report = json.loads((out / "sweep.json").read_text())
    assert report["ns"] == [1, 2] and report["seeds"] == [0, 1] and report["prompts"] >= 1
    agg = report["aggregate"]
    assert set(agg) == {"rlaifv-reward", "dpo-reward", "reward-min", "reward-last", "labeler", "perplexity"}
    for scorer in agg:
        assert agg[scorer]["1"] == agg["rlaifv-reward"]["1"]  # N = 1 is candidate 0 for everyone
    assert agg["rlaifv-reward"]["2"] == agg["rlaifv-reward"]["1"] == agg["dpo-reward"]["2"] == agg["reward-min"]["2"] == agg["reward-last"]["2"]
    for seed in (0, 1):
        for r in read_records(out / f"seed-{seed}", BestOfNResult):
            assert len(r.candidates) == 2 and set(r.scores("rlaifv-reward")) == {0.0} and r.chosen_index == 0
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| rlaifv-reward | 2 |" in (out / "sweep.md").read_text()


def test_scorer_correlations_by_hand(tmp_path):
    """Per prompt Pearson r of score vs hallucinated objects / wrong attributes / correct objects / words."""
    from rlaifv.sandbox.bestofn_sweep import scorer_correlations
    from rlaifv.sandbox.prompts import scene_of, write_sandbox_prompts
    from rlaifv.sandbox.tasks import sentence
    from rlaifv.store import RecordStore, read_records as read

    path = write_sandbox_prompts(tmp_path / "prompts", 1, split="test")
    prompt = next(iter(read(path, Prompt)))
    obj = scene_of(prompt).objects[0]
    true, absent = sentence(obj), "There is a large red cross at the bottom right."
    if "cross" in [o.shape for o in scene_of(prompt).objects]:
        pytest.skip("scene 0 holds a cross")
    recoloured = sentence(dataclasses.replace(obj, colour="blue" if obj.colour != "blue" else "red"))
    texts = [true, true + " " + absent, absent, recoloured]  # hallucinated 0, 1, 1, 0; wrong attr. 0, 0, 0, 1; correct 1, 1, 0, 1
    words = [len(t.split()) for t in texts]
    score = [3.0, 1.0, 2.0, 0.5]
    cands = [{"text": t, "scores": {"rlaifv-reward": s}} for t, s in zip(texts, score)]
    with RecordStore(tmp_path / "seed-0", BestOfNResult) as store:
        store.write([BestOfNResult(prompt.prompt_id, prompt.question, "rlaifv-reward", 0, true, cands)])
    corr = scorer_correlations(tmp_path)["rlaifv-reward"]
    assert corr["hallucinated"] == pytest.approx(statistics.correlation(score, [0, 1, 1, 0]))
    assert corr["attr_errors"] == pytest.approx(statistics.correlation(score, [0, 0, 0, 1]))
    assert corr["correct"] == pytest.approx(statistics.correlation(score, [1, 1, 0, 1]))
    assert corr["words"] == pytest.approx(statistics.correlation(score, words))


def test_labeler_audit_by_hand(tmp_path):
    """Rejected claims checked against the scene: one true claim rejected (fp), one false claim
    rejected (tp), one false claim kept (fn); the fewest false claims of the prompt's candidates is 1."""
    from rlaifv.sandbox.bestofn_sweep import labeler_audit
    from rlaifv.sandbox.prompts import scene_of, write_sandbox_prompts
    from rlaifv.sandbox.tasks import sentence
    from rlaifv.store import RecordStore, read_records as read

    path = write_sandbox_prompts(tmp_path / "prompts", 1, split="test")
    prompt = next(iter(read(path, Prompt)))
    if "cross" in [o.shape for o in scene_of(prompt).objects]:
        pytest.skip("scene 0 holds a cross")
    true, absent = sentence(scene_of(prompt).objects[0]), "There is a large red cross at the bottom right."
    cands = [{"text": "a", "claims": [true, absent], "rejected": [True, True], "scores": {"labeler": -2.0}},
             {"text": "b", "claims": [absent, true, absent], "rejected": [False, False, True], "scores": {"labeler": -1.0}}]
    with RecordStore(tmp_path / "seed-0", BestOfNResult) as store:
        store.write([BestOfNResult(prompt.prompt_id, prompt.question, "labeler", 1, "b", cands)])
    audit = labeler_audit(tmp_path)
    assert audit["claims"] == 5 and audit["unparsable"] == 0
    assert (audit["reject"]["tp"], audit["reject"]["fp"], audit["reject"]["fn"]) == (2, 1, 1)
    assert audit["fewest_false_claims_per_prompt"] == {1: 1}
