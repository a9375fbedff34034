"""The ``labeler-direct`` recipe (``sandbox/direct_labeler.py``): heads are training scaffolding
only, one step lowers the auxiliary loss, false claims change exactly one thing, and the
decision position is the last prompt token that conquer reads."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlaifv.models.chat import collate
from rlaifv.models.generate import score_yes_no
from rlaifv.models.load import load_vlm
from rlaifv.models.yesno import yes_no_ids
from rlaifv.sandbox.direct_labeler import (
    CELL_HEADS, CLAIM_KINDS, MATCH_HEADS, DirectLabelerConfig, aux_loss, aux_targets, claim_batch, claim_pair,
    decision_positions, false_claim, finetune, setup, train_step,
)
from rlaifv.sandbox.render import render
from rlaifv.sandbox.tasks import claim_question
from rlaifv.sandbox.world import Scene, SceneObject, World, WorldConfig

#: a fixed scene: circle at the top left, square in the center; every other cell empty
SCENE = Scene("hand", [SceneObject("circle", "red", "large", 0), SceneObject("square", "blue", "small", 4)])


def _tiny_cfg(**kw) -> DirectLabelerConfig:
    base = dict(init_from="", steps=2, warmup=1, claim_scenes=2, describe_scenes=2, log_every=1000, probe_scenes=2, existence_scenes=0,
                cell_layer=0, match_layer=1, world=WorldConfig(image_size=48))
    return DirectLabelerConfig(**{**base, **kw})


@pytest.fixture()
def tiny(tiny_sandbox_model):
    return load_vlm(tiny_sandbox_model)


@pytest.mark.parametrize("kind", CLAIM_KINDS)
def test_false_claim_changes_exactly_one_thing(kind):
    rng = random.Random(0)
    t = SCENE.objects[0]
    for _ in range(20):
        neg = false_claim(SCENE, t, kind, rng, WorldConfig())
        assert neg not in SCENE.objects
        changed = {f for f in ("shape", "colour", "size", "cell") if getattr(neg, f) != getattr(t, f)}
        if kind == "absent_occupied":
            assert changed == {"shape"} and neg.shape not in SCENE.shapes()
        elif kind == "wrong_colour":
            assert changed == {"colour"}
        elif kind == "wrong_size":
            assert changed == {"size"} and neg.size == "small"
        elif kind == "wrong_cell":
            assert changed == {"cell"}
        else:  # both companions present here: an absent shape at an empty cell
            assert neg.shape not in SCENE.shapes() and SCENE.by_cell(neg.cell) is None


def test_absent_companion_when_companion_missing():
    scene = Scene("hand2", [SceneObject("star", "green", "small", 8)])
    neg = false_claim(scene, scene.objects[0], "absent_companion", random.Random(1), WorldConfig())
    assert neg.shape == "cross" and neg.cell != 8


def test_claim_pair_is_one_true_one_false_and_aux_targets():
    pair = claim_pair(SCENE, random.Random(3), WorldConfig(), {k: 1.0 for k in CLAIM_KINDS})
    (t, k0), (neg, k1) = pair
    assert k0 == "true" and t in SCENE.objects and k1 in CLAIM_KINDS and neg not in SCENE.objects
    tg = aux_targets(SCENE, SceneObject("circle", "blue", "large", 0))
    assert (tg["cell_shape"], tg["match_shape"], tg["match_colour"], tg["match_size"]) == (0, 1, 0, 1)
    empty = aux_targets(SCENE, SceneObject("star", "red", "small", 8))
    assert empty["cell_shape"] == 8 and empty["cell_colour"] == -100 and empty["q_cell"] == 8
    assert (empty["match_shape"], empty["match_colour"], empty["match_size"]) == (0, 0, 0)


def test_decision_position_is_the_last_prompt_token_conquer_reads(tiny):
    model, proc = tiny
    scenes = World(WorldConfig(image_size=48)).scenes(3, "val")
    imgs = [render(s, 48) for s in scenes]
    qs = [claim_question(s.objects[0]) for s in scenes]
    batch = collate(proc, imgs, qs, ["Yes.", "No.", "Yes."])
    pos = decision_positions(batch["labels"])
    ids = yes_no_ids(proc)
    first = batch["labels"][torch.arange(3), pos + 1]
    assert set(first[[0, 2]].tolist()) <= set(ids.yes) and first[1].item() in ids.no
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[torch.arange(3), pos]
    probs = torch.softmax(logits, -1)
    p_yes, p_no = score_yes_no(model, proc, imgs, qs)  # conquer's read-out: last prompt position, left padding
    assert torch.allclose(probs[:, list(ids.yes)].sum(-1), torch.tensor(p_yes), atol=1e-5)
    assert torch.allclose(probs[:, list(ids.no)].sum(-1), torch.tensor(p_no), atol=1e-5)


def test_one_step_lowers_aux_loss_on_a_fixed_batch(tiny):
    model, proc = tiny
    cfg = _tiny_cfg(lr=5e-3, warmup=1)
    model, proc, heads, params, opt, sched = setup(cfg, model, proc)
    batch, aux, kinds = claim_batch(World(cfg.world), proc, random.Random(0), cfg)
    assert len(kinds) == 4 and kinds.count("true") == 2  # existence_scenes 0 (the tiny config): claim pairs only

    assert set(heads) == set(CELL_HEADS) | set(MATCH_HEADS)

    def aux_now() -> float:
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
            return aux_loss(out.hidden_states, decision_positions(batch["labels"]), heads, aux, cfg)[0].item()

    before = aux_now()
    model.train()
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    loss, _ = aux_loss(out.hidden_states, decision_positions(batch["labels"]), heads, aux, cfg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert aux_now() < before
    train_step(model, proc, heads, params, opt, sched, World(cfg.world), random.Random(1), cfg, 0)  # the real step runs


def test_existence_pairs_ask_pope_wording_with_cell_targets_ignored(tiny):
    _, proc = tiny
    cfg = _tiny_cfg(existence_scenes=1)
    batch, aux, kinds = claim_batch(World(cfg.world), proc, random.Random(0), cfg)
    assert kinds[:2] == ["probe_yes", "probe_no"] and kinds[2] == "true" and len(kinds) == 4
    assert (aux["cell_shape"][:2] == -100).all() and (aux["match_shape"][:2] == -100).all() and (aux["q_shape"][:2] >= 0).all() and aux["exists"][:2].tolist() == [1, 0] and (aux["exists"][2:] == -100).all()
    text = proc.tokenizer.decode(batch["input_ids"][0])
    assert "in the image?" in text


def test_saved_folder_is_a_plain_vlm_without_heads(tiny, tmp_path):
    from safetensors import safe_open

    model, proc = tiny
    cfg = _tiny_cfg()
    trained, tproc, log = finetune(cfg, tmp_path / "out", model=model, processor=proc)
    assert [c["step"] for c in log["curve"]] == [0, 2]
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert not any(h in n for n in names for h in (*CELL_HEADS, *MATCH_HEADS))
    reloaded, rproc = load_vlm(tmp_path / "out")
    assert (tmp_path / "out" / "rlaifv_finetune.json").exists()
    scenes = World(cfg.world).scenes(2, "val")
    batch = collate(rproc, [render(s, 48) for s in scenes], [claim_question(s.objects[0]) for s in scenes], padding_side="left")
    with torch.no_grad():
        assert torch.allclose(trained.eval()(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_snapshots_equal_a_run_stopped_there_and_keep_the_full_schedule(tiny_sandbox_model, tmp_path):
    """--save-at / --stop-after: the snapshot after step 1 of a 3-step schedule is the model after
    step 1 (same weights as a run stopped there), and stopping writes no final model."""
    from safetensors.torch import load_file

    cfg = _tiny_cfg(steps=3)
    m1, p1 = load_vlm(tiny_sandbox_model)
    finetune(cfg, tmp_path / "full", model=m1, processor=p1, save_at=[1, 2])
    m2, p2 = load_vlm(tiny_sandbox_model)
    _, _, log = finetune(cfg, tmp_path / "stopped", model=m2, processor=p2, save_at=[1], stop_after=1)
    assert log["steps_done"] == 1
    assert sorted(p.name for p in (tmp_path / "full").glob("step-*")) == ["step-00001", "step-00002"]
    assert (tmp_path / "full" / "model.safetensors").exists() and not (tmp_path / "stopped" / "model.safetensors").exists()
    a = load_file(str(tmp_path / "full" / "step-00001" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "step-00001" / "model.safetensors"))
    c = load_file(str(tmp_path / "full" / "step-00002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # step 2 trained further
    assert json.loads((tmp_path / "full" / "step-00001" / "rlaifv_finetune.json").read_text())["steps_done"] == 1


def test_finetune_cli_rejects_bad_snapshot_steps(tmp_path):
    """One error line as a user sees it (the real console script), nothing trained."""
    import subprocess
    import sys

    for arg, want in (("5,abc", "expected comma-separated step numbers"), ("99999", "steps must lie in 1..3400")):
        r = subprocess.run([sys.executable, "-m", "rlaifv.cli", "sandbox", "finetune-labeler", "--out", str(tmp_path / "x"), "--save-at", arg],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and want in r.stderr + r.stdout and "Traceback" not in r.stderr
        assert not (tmp_path / "x").exists()


def test_snapshot_eval_table_after_training(tiny_sandbox_model, tmp_path, capsys):
    """``--save-at`` ends with each snapshot's fresh evaluation and one table (this crashed with
    KeyError 'model' after a 2,200-step run had saved and evaluated every snapshot)."""
    import shutil

    from rlaifv.cli_labeler import _eval_snapshots

    for step in (1, 2):
        shutil.copytree(tiny_sandbox_model, tmp_path / f"step-{step:05d}")
    _eval_snapshots(tmp_path, [1, 2], eval_scenes=2, eval_start=10_000)
    for step in (1, 2):
        res = json.loads((tmp_path / f"step-{step:05d}" / "rlaifv_eval.json").read_text())
        assert res["claims"]["direct"]["n"] > 0
    out = capsys.readouterr().out
    assert "step-00001" in out and "step-00002" in out and "claim F1" in out
