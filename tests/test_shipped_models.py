"""The sandbox checkpoints shipped in the package load with plain transformers and reach their
numbers (on a smaller held-out sample than RESULTS.md, hence the margins)."""

from __future__ import annotations

import json

import pytest

from rlaifv.models.load import load_vlm, resolve_model_path
from rlaifv.sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox
from rlaifv.sandbox.pretrain import PRESETS


@pytest.mark.parametrize("name", ["policy", "labeler"])
def test_shipped_checkpoint_loads_with_plain_transformers(name):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_path(f"sandbox:{name}")
    model = AutoModelForImageTextToText.from_pretrained(path)
    AutoProcessor.from_pretrained(path)
    log = json.loads((path / "rlaifv_pretrain.json").read_text())
    assert log["config"]["preset"] == name
    # the shipped file was built by the preset as it stands (command in RESULTS.md)
    assert log["config"]["steps"] == PRESETS[name].steps and log["config"]["seed"] == PRESETS[name].seed
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_shipped_policy_hallucinates_but_describes():
    model, proc = load_vlm("sandbox:policy")
    res = evaluate_sandbox(model, proc, SandboxEvalConfig(n_scenes=60, pope=False, claims=False))
    s = res["describe"]["sampled"]
    assert 0.2 <= s["chair_i"] <= 0.6, s
    assert s["recall"] >= 0.4, s
    assert s["unparsed_rate"] < 0.05, s


def test_shipped_labeler_judges_claims():
    # The sandbox feedback runs use the describe-then-match stand-in (RESULTS.md: the direct
    # yes/no read-out of this labeler is still at chance); it must stay accurate.
    model, proc = load_vlm("sandbox:labeler")
    cfg = SandboxEvalConfig(n_scenes=30, describe=False, pope=False, claim_modes=("describe_then_match",))
    res = evaluate_sandbox(model, proc, cfg)["claims"]["describe_then_match"]
    assert res["f1"] >= 0.95 and res["accuracy_by_kind"]["absent_companion"] >= 0.95, res


@pytest.mark.parametrize("name", ["labeler-direct", "policy-direct"])
def test_shipped_direct_checkpoint_is_a_plain_vlm_built_by_its_preset(name):
    from transformers import AutoModelForImageTextToText

    from rlaifv.sandbox.direct_labeler import preset

    path = resolve_model_path(f"sandbox:{name}")
    model = AutoModelForImageTextToText.from_pretrained(path)  # no auxiliary heads: a plain VLM
    log = json.loads((path / "rlaifv_finetune.json").read_text())
    want = preset(name).to_dict()
    assert log["config"] == json.loads(json.dumps(want)), "the shipped file was not built by the preset as it stands"
    assert not any("heads" in n for n, _ in model.named_parameters())


def _direct_eval(name: str, n_scenes: int = 40):
    model, proc = load_vlm(f"sandbox:{name}")
    cfg = SandboxEvalConfig(n_scenes=n_scenes, split="test", start=10_400, claim_modes=("direct",))
    return evaluate_sandbox(model, proc, cfg)


def test_shipped_direct_labeler_answers_claims_directly():
    # fresh test scenes 10400.. (the rebuild's own evaluation used 10000..10399); margins for 40 scenes
    res = _direct_eval("labeler-direct")
    claims = res["claims"]["direct"]
    assert claims["f1"] >= 0.9 and claims["accuracy"] >= 0.95, claims
    assert min(v["f1"] for v in res["pope"].values()) >= 0.85, res["pope"]
    assert res["describe"]["sampled"]["chair_i"] <= 0.05 and res["describe"]["sampled"]["recall"] >= 0.93, res["describe"]


def test_shipped_direct_policy_judges_better_than_it_describes():
    res = _direct_eval("policy-direct")
    s, claims = res["describe"]["sampled"], res["claims"]["direct"]
    assert 0.15 <= s["chair_i"] <= 0.6 and s["recall"] >= 0.75, s
    assert claims["accuracy"] >= 1 - s["chair_i"] + 0.05, (claims["accuracy"], s["chair_i"])  # the generative-discriminative gap


def test_demo_preset_runs_the_methods_direct_conquer():
    from rlaifv.sandbox.loop import PRESETS, sandbox_direct_preset

    cfg = sandbox_direct_preset("runs/x")
    assert cfg.feedback.conquer.mode == "direct" and PRESETS["sandbox"]().feedback.conquer.mode == "describe_then_match"
    assert (cfg.policy, cfg.labeler) == ("sandbox:policy-direct", "sandbox:labeler-direct")
    for name in (cfg.policy, cfg.labeler):
        assert (resolve_model_path(name) / "model.safetensors").is_file()
