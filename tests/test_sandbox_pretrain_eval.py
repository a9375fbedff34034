"""Sandbox pre-training (tiny budgets) and the evaluation runner, end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from rlaifv.sandbox.evaluate import NEGATIVE_KINDS, SandboxEvalConfig, claim_probe_set, evaluate_sandbox, summary_row
from rlaifv.sandbox.pretrain import PRESETS, cell_targets, preset, sft_loss
from rlaifv.sandbox.tasks import claim_is_true
from rlaifv.sandbox.world import SHAPES, Scene, SceneObject, World, WorldConfig


def test_presets_differ_where_the_recipe_says():
    # The policy learns from captions with hallucinated companions; the labeler from clean ones.
    assert PRESETS["policy"].p_extra > 0 and PRESETS["labeler"].p_extra == 0
    assert PRESETS["labeler"].mix["claim"] > PRESETS["policy"].mix["claim"]
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_cell_targets_by_hand():
    s = Scene("x", [SceneObject("star", "blue", "large", 4), SceneObject("ring", "red", "small", 0)])
    shape, colour, size = cell_targets([s])
    empty = len(SHAPES)
    assert shape[0].tolist() == [SHAPES.index("ring"), empty, empty, empty, SHAPES.index("star"), empty, empty, empty, empty]
    assert colour[0, 4].item() == 2 and colour[0, 0].item() == 0 and colour[0, 1].item() == -100  # blue=2, red=0
    assert size[0, 4].item() == 1 and size[0, 0].item() == 0


def test_sft_loss_per_example_vs_per_token():
    # Two examples: one with 1 supervised token of loss a, one with 3 tokens of loss b.
    # per token = (a + 3b) / 4 ; per example = (a + b) / 2.
    class Fake(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(2, 5, 2)
            logits[..., 0] = 10.0  # predicts token 0 everywhere
            return type("O", (), {"logits": logits})()

    labels = torch.tensor([[-100, -100, -100, -100, 1], [-100, 0, 0, 1, -100]])
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5), "labels": labels}
    wrong = torch.nn.functional.cross_entropy(torch.tensor([[10.0, 0.0]]), torch.tensor([1])).item()
    right = torch.nn.functional.cross_entropy(torch.tensor([[10.0, 0.0]]), torch.tensor([0])).item()
    b = (right + right + wrong) / 3
    assert sft_loss(Fake(), batch, per_example=False).item() == pytest.approx((wrong + 2 * right + wrong) / 4, rel=1e-5)
    assert sft_loss(Fake(), batch, per_example=True).item() == pytest.approx((wrong + b) / 2, rel=1e-5)


def test_claim_probe_set_labels_are_ground_truth():
    world = WorldConfig()
    scenes = World(world).scenes(30, "val")
    items = claim_probe_set(scenes, world, seed=3)
    assert {k for *_, k in items} == {"true", *NEGATIVE_KINDS}
    for scene, obj, label, kind in items:
        assert claim_is_true(scene, obj) == label, kind
    # an "absent_companion" claim names the companion of a present shape whenever one is absent
    comp = [(s, o) for s, o, _, k in items if k == "absent_companion"]
    checked = 0
    for s, o in comp:
        absent_comps = {world.companion(x) for x in s.shapes()} - s.shapes()
        if absent_comps:
            assert o.shape in absent_comps and s.by_cell(o.cell) is None
            checked += 1
    assert checked >= 5


def test_pretrain_saves_a_loadable_checkpoint(tiny_sandbox_model):
    from rlaifv.models.load import load_vlm

    log = json.loads((tiny_sandbox_model / "rlaifv_pretrain.json").read_text())
    assert log["config"]["preset"] == "labeler" and log["config"]["steps"] == 4
    assert (tiny_sandbox_model / "rlaifv_tiny.json").exists()
    model, proc = load_vlm(tiny_sandbox_model)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"


def test_pretrain_is_seeded(tiny_pretrain_config):
    from rlaifv.sandbox.pretrain import pretrain

    a, _, _ = pretrain(tiny_pretrain_config)
    b, _, _ = pretrain(tiny_pretrain_config)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_evaluate_sandbox_reports_every_metric(tiny_sandbox_model):
    from rlaifv.models.load import load_vlm

    model, proc = load_vlm(tiny_sandbox_model)
    res = evaluate_sandbox(model, proc, SandboxEvalConfig(n_scenes=4, max_new_tokens=8, claim_modes=("direct", "describe_then_answer", "describe_then_match")))
    assert res["claims"]["describe_then_answer"]["n"] == res["claims"]["direct"]["n"]
    assert set(res["pope"]) == {"random", "popular", "adversarial"}
    for split in res["pope"].values():
        assert 0.0 <= split["f1"] <= 1.0 and split["n"] > 0
    assert res["claims"]["direct"]["n"] == 4 * (1 + len(NEGATIVE_KINDS))  # one true + one per false kind, per scene
    row = summary_row("tiny", res)
    assert {"CHAIR_i (sampled)", "recall (sampled)", "POPE adversarial F1", "claim F1"} <= set(row)


def test_history_puts_earlier_turns_before_the_question(tiny_sandbox_model):
    from rlaifv.models.chat import collate, prompt_text
    from rlaifv.models.load import load_vlm
    from rlaifv.sandbox.render import render

    _, proc = load_vlm(tiny_sandbox_model)
    text = prompt_text(proc, "Is there a star?", [("Describe the image in detail.", "There is a small red star in the center.")])
    assert text.index("<image>") < text.index("Describe") < text.index("small red star") < text.index("Is there a star?")
    assert text.count("<image>") == 1 and text.endswith("<|im_start|>assistant\n")
    img = render(World().scene(0))
    with_hist = collate(proc, [img], ["Is there a star?"], histories=[[("Describe the image in detail.", "There is a small red star in the center.")]])
    without = collate(proc, [img], ["Is there a star?"])
    assert with_hist["input_ids"].shape[1] > without["input_ids"].shape[1]
