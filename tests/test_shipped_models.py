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
