"""`rlaifv export --format hf` (issue 13.4) and `--pairs` (issue 12.7): a datasets DatasetDict with an
Image() column and TRL's preference columns, a dataset card, and a push that fails cleanly offline."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from rlaifv.records import PreferencePair, Prompt
from rlaifv.store import RecordStore

QUESTION = "Describe the image."


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (8, 6), colour)
    img.putpixel((1, 2), (255 - colour[0], 7, 9))
    img.save(path, format="PNG")
    return path.read_bytes()


@pytest.fixture()
def run(tmp_path):
    """A feedback run folder as `rlaifv feedback` leaves it: prompts/ (with images), pairs/, manifests, summary."""
    run = tmp_path / "run"
    (run / "prompts" / "images").mkdir(parents=True)
    raw = {"a": _png(run / "prompts" / "images" / "a.png", (200, 10, 10)), "b": _png(run / "prompts" / "images" / "b.png", (10, 200, 10))}
    prompts = [Prompt(k, QUESTION, image=f"images/{k}.png") for k in "ab"]
    (run / "prompts" / "prompts.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    pairs = [PreferencePair("a", QUESTION, "images/a.png", "A red square.", "A blue circle.", "a#0", "a#1", 0.0, -2.0),
             PreferencePair("a", QUESTION, "images/a.png", "A red square.", "A red dog.", "a#0", "a#2", 0.0, -1.0),
             PreferencePair("b", QUESTION, "images/b.png", "Green.", "Purple and\nyellow.", "b#3", "b#1", -1.0, -3.0)]
    with RecordStore(run / "pairs", PreferencePair) as store:
        store.write(pairs)
    (run / "pairs" / "stats.json").write_text(json.dumps({"min_score_gap": 1.0, "dropped_tie": 4, "pairs_before_cap": 5,
                                                          "pairs_after_cap": 4, "pairs_after_balance": 3}))
    for folder, config in (("candidates", {"model": "/home/alice/models/my-policy", "n": 4, "temperature": 0.7, "max_new_tokens": 64, "seed": 3}),
                           ("claims", {"backend": "rules"}), ("questions", {"backend": "rules"}),
                           ("scores", {"model": "sandbox:labeler", "mode": "direct"})):
        (run / folder).mkdir()
        (run / folder / "manifest.json").write_text(json.dumps({"stage": folder, "config": config, "versions": {"datasets": datasets.__version__}}))
    (run / "feedback.json").write_text(json.dumps({"counts": {"prompts": 2, "candidates": 8, "claims": 20}, "rejected": {"sample": 1}}))
    return run, raw, pairs


def _cli(args: list[str]):
    from rlaifv.cli import app

    res = CliRunner().invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def test_hf_export_round_trips_through_load_from_disk(run, tmp_path):
    run, raw, pairs = run
    res = _cli(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert res.exit_code == 0 and "wrote 3 pairs" in res.output, res.output
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert list(dd) == ["train"]
    ds = dd["train"]
    assert ds.column_names == ["image", "prompt", "chosen", "rejected", "question", "pair_id", "prompt_id", "chosen_id",
                               "rejected_id", "chosen_score", "rejected_score"]
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[2]
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": QUESTION}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "Green."}]}]
    assert row["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": "Purple and\nyellow."}]}]
    assert (row["pair_id"], row["prompt_id"], row["chosen_id"], row["rejected_id"]) == ("b#3>b#1", "b", "b#3", "b#1")
    assert (row["chosen_score"], row["rejected_score"]) == (-1.0, -3.0)
    stored = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert [cell["bytes"] for cell in stored] == [raw["a"], raw["a"], raw["b"]]  # the original file bytes
    assert np.array_equal(np.asarray(ds[0]["image"].convert("RGB")), np.asarray(Image.open(io.BytesIO(raw["a"])).convert("RGB")))


def test_dataset_card_says_how_the_data_was_made(run, tmp_path):
    run, _, _ = run
    _cli(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\n") and "image-text-to-text" in card and "n<1K" in card  # Hub YAML front matter
    for needle in ("| `image` |", "| `chosen_score` |",  # schema
                   "`my-policy (local folder)`; 4 candidates per prompt, temperature 0.7, at most 64 new tokens, seed 3",
                   "`sandbox:labeler`, mode `direct`", "`rules` backend",
                   "5 pairs before the per-prompt cap, 4 after it, 3 after length balancing",
                   "rows (preference pairs): 3", "distinct prompts with a pair: 2", "candidates in the run: 8",
                   "inputs rejected by a stage: sample 1", f"datasets {datasets.__version__}",
                   "Yu et al., CVPR 2025", "arXiv 2405.17220", "@inproceedings{yu2025rlaifv"):
        assert needle in card, needle
    assert "/home/alice" not in card  # local absolute paths are not published


def test_pairs_flag_and_bad_combinations(run, tmp_path):
    run, _, _ = run
    other = tmp_path / "pairs-b"
    with RecordStore(other, PreferencePair) as store:
        store.write([PreferencePair("b", QUESTION, "images/b.png", "Green.", "Red.", "b#0", "b#1", 0.0, -1.0)])
    res = _cli(["export", "--pairs", str(other), "--prompts", str(run / "prompts" / "prompts.jsonl"), "--format", "trl",
                "--out", str(tmp_path / "trl")])
    assert res.exit_code == 0 and "wrote 1 pairs" in res.output, res.output
    res = _cli(["export", "--run", str(run), "--pairs", str(other), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert res.exit_code == 0 and len(datasets.load_from_disk(str(tmp_path / "hf"))["train"]) == 1
    assert "given separately" in (tmp_path / "hf" / "README.md").read_text()  # the run's pairing stats are not claimed
    assert "--pairs" in _cli(["export", "--help"]).output
    from rlaifv.cli import UserError

    for args, message in ((["--format", "trl"], "give --run RUN"), (["--run", str(run), "--format", "csv"], "unknown --format"),
                          (["--run", str(run), "--format", "trl", "--push-to-hub", "me/x"], "needs --format hf")):
        with pytest.raises(UserError, match=message):
            _cli(["export", *args, "--out", str(tmp_path / "x")])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier hf export"):
        _cli(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "taken")])
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_push_to_hub_offline_is_one_line_and_keeps_the_folder(run, tmp_path, rlaifv_bin):
    run, _, _ = run
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    proc = subprocess.run(rlaifv_bin + ["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf"),
                                        "--push-to-hub", "someone/rlaifv-pairs"], capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("error:")]
    assert "someone/rlaifv-pairs" in line and "offline" in line.lower() and str(tmp_path / "hf") in line
    assert len(datasets.load_from_disk(str(tmp_path / "hf"))["train"]) == 3  # nothing lost


def test_push_calls_datasets_push_to_hub_then_merges_the_card(run, tmp_path, monkeypatch):
    """Up to the upload: datasets' own push_to_hub gets the saved DatasetDict; the card keeps the YAML it wrote."""
    import huggingface_hub

    run, _, _ = run
    calls: dict = {}
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: calls.update(repo=repo, rows=len(self["train"]), **kw))
    hub_card = huggingface_hub.DatasetCard("---\ndataset_info:\n  splits:\n  - name: train\n---\nauto card\n")
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", classmethod(lambda cls, repo, **kw: hub_card))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub", lambda self, repo, **kw: calls.update(card=str(self), card_repo=repo))
    res = _cli(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf"), "--push-to-hub", "me/pairs", "--private"])
    assert res.exit_code == 0 and "pushed" in res.output, res.output
    assert (calls["repo"], calls["rows"], calls["private"], calls["card_repo"]) == ("me/pairs", 3, True, "me/pairs")
    assert "dataset_info" in calls["card"] and "image-text-to-text" in calls["card"] and "auto card" not in calls["card"]
    assert "@inproceedings{yu2025rlaifv" in calls["card"]


def test_trl_dpo_trainer_takes_the_rows(run, tmp_path):
    """TRL's DPOTrainer data preparation (vision collator, chat template) accepts the exported rows as loaded."""
    from trl import DPOConfig, DPOTrainer

    from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, train_tokenizer

    run, _, _ = run
    _cli(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    ds = datasets.load_from_disk(str(tmp_path / "hf"))["train"]
    cfg = TinyVLMConfig(arch="idefics3", image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32,
                        text_layers=1, intermediate=64, vision_heads=2, text_heads=2, text_kv_heads=2, vocab_size=400)
    tok = train_tokenizer(["Describe the image. A red square. A blue circle. Green. Purple and yellow."] * 20, "idefics3", 400)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, max_length=None, report_to=[], save_strategy="no",
                     per_device_train_batch_size=3, beta=0.1, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 6 and "pixel_values" in batch  # 3 chosen + 3 rejected, with the images
    assert (batch["input_ids"] == processor.image_token_id).any()
    with torch.no_grad():
        assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
