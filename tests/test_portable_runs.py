"""Run folders that travel (issue 12.5): feedback keeps its own copy of the prompts and images, LoRA
adapters record a portable base reference, and export / train / best-of-n work from a run folder
moved to another directory and called from another working directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rlaifv.models.load import ADAPTER_BASE_RECORD, ModelLoadError, adapter_base
from rlaifv.records import Candidate, PreferencePair, Prompt
from rlaifv.stages.bestofn import BestOfNResult
from rlaifv.store import RecordStore, read_records

from photos import cli_ok

QUESTION = "Describe the image in detail."


def _project(root: Path, model: Path) -> None:
    """A user's project: a base model, photos, a prompts file naming them relative to itself."""
    from rlaifv.sandbox.render import render
    from rlaifv.sandbox.world import World

    shutil.copytree(model, root / "models" / "base")
    (root / "photos").mkdir(parents=True)
    for i in range(3):
        render(World().scene(i)).save(root / "photos" / f"p{i}.png")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt_id": f"p{i}", "question": QUESTION, "image": f"photos/p{i}.png"}) + "\n"
                                                for i in range(3)))
    (root / "train.yaml").write_text(yaml.safe_dump({"merge_lora": False, "epochs": 1.0, "batch_size": 2, "checkpoints_per_epoch": 1,
                                                     "lora_r": 4, "lora_alpha": 8, "lr": 1e-3, "progress": False}))


def _hand_pairs(run: Path) -> int:
    """Pairs from the run's candidates (the tiny random labeler rejects every claim, so the run has none):
    what matters here is that they name the run's prompts and images."""
    cands = list(read_records(run / "candidates", Candidate))
    prompts = {p.prompt_id: p for p in read_records(run / "prompts" / "prompts.jsonl", Prompt)}
    pairs = []
    for pid, p in prompts.items():
        a, b = [c for c in cands if c.prompt_id == pid][:2]
        rejected = b.text if b.text != a.text else b.text + " There is a star."
        pairs.append(PreferencePair(pid, p.question, p.image, a.text or "A scene.", rejected, a.id, b.id, 0.0, -1.0))
    shutil.rmtree(run / "pairs")
    with RecordStore(run / "pairs", PreferencePair) as store:
        store.write(pairs)
    return len(pairs)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("shard-*"))}


def test_a_moved_run_folder_exports_trains_and_runs_best_of_n(tiny_sandbox_model, tmp_path, monkeypatch):
    home = tmp_path / "home" / "project"
    _project(home, tiny_sandbox_model)
    monkeypatch.chdir(home)
    feedback = ["feedback", "--prompts", "prompts.jsonl", "--policy", "models/base", "--labeler", "models/base", "--n", "2",
                "--max-new-tokens", "8", "--out", "runs/fb"]
    cli_ok(feedback)
    copy = home / "runs" / "fb" / "prompts" / "prompts.jsonl"
    prompts = list(read_records(copy, Prompt))
    for i, p in enumerate(prompts):  # image references relative to the copy; the bytes are the user's file's
        assert not Path(p.image).is_absolute() and p.image.startswith("images/") and p.image.endswith(f"-p{i}.png")
        assert (copy.parent / p.image).read_bytes() == (home / "photos" / f"p{i}.png").read_bytes()
        assert p.metadata["source_image"] == f"photos/p{i}.png"  # as the user's file named it
    before, copy_mtime = _mtimes(home / "runs" / "fb"), copy.stat().st_mtime_ns
    cli_ok(feedback)  # the same command again: it resumes (nothing redone, the copy untouched)
    assert _mtimes(home / "runs" / "fb") == before and copy.stat().st_mtime_ns == copy_mtime
    n_pairs = _hand_pairs(home / "runs" / "fb")
    cli_ok(["train", "--pairs", "runs/fb/pairs", "--prompts", "runs/fb/prompts/prompts.jsonl", "--model", "models/base",
          "--out", "runs/dpo", "--config", "train.yaml"])
    (adapter,) = sorted((home / "runs" / "dpo" / "checkpoints").glob("step-*"))
    record = json.loads((adapter / ADAPTER_BASE_RECORD).read_text())
    assert record == {"base_model": "models/base", "absolute": str(home / "models" / "base"),
                      "relative_to_adapter": "../../../../models/base"}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(home / "models" / "base")

    moved = tmp_path / "elsewhere" / "moved"  # the project moves; the original photos and prompts file are gone
    moved.parent.mkdir()
    shutil.move(str(home), str(moved))
    shutil.rmtree(moved / "photos")
    (moved / "prompts.jsonl").unlink()
    assert not home.exists()
    other_cwd = tmp_path / "cwd"
    other_cwd.mkdir()
    monkeypatch.chdir(other_cwd)
    run = moved / "runs" / "fb"
    assert f"wrote {n_pairs} pairs" in cli_ok(["export", "--run", str(run), "--format", "trl", "--out", str(moved / "trl")])
    assert f"wrote {n_pairs} pairs" in cli_ok(["export", "--run", str(run), "--format", "hf", "--out", str(moved / "hf")])
    # the same training command from the moved folder: resumes (finished), its images found in the run's copy
    out = cli_ok(["train", "--pairs", str(run / "pairs"), "--prompts", str(run / "prompts" / "prompts.jsonl"), "--model",
                str(moved / "models" / "base"), "--out", str(moved / "runs" / "dpo"), "--config", str(moved / "train.yaml")])
    assert "different run" not in out
    moved_adapter = moved / "runs" / "dpo" / "checkpoints" / adapter.name
    assert adapter_base(moved_adapter) == moved_adapter / "../../../../models/base"  # the absolute path is gone: relative wins
    cli_ok(["best-of-n", "--prompts", str(run / "prompts" / "prompts.jsonl"), "--policy", str(moved_adapter), "--n", "2",
          "--max-new-tokens", "6", "--out", str(moved / "bon")])
    results = list(read_records(moved / "bon" / "results", BestOfNResult))
    assert len(results) == 3 and all(r.models["reference"] == f"{moved_adapter} (adapter off)" for r in results)


def test_an_adapter_whose_base_is_nowhere_names_both_places(tmp_path, tiny_sandbox_model):
    from rlaifv.models.load import record_adapter_base

    ad = tmp_path / "run" / "adapter"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base", "peft_type": "LORA"}))
    shutil.copytree(tiny_sandbox_model, tmp_path / "run" / "base")
    rec = record_adapter_base(ad, str(tmp_path / "run" / "base"))
    assert rec["relative_to_adapter"] == "../base" and adapter_base(ad) == tmp_path / "run" / "base"
    shutil.move(str(ad), str(tmp_path / "lonely"))  # moved without its base
    shutil.rmtree(tmp_path / "run" / "base")
    with pytest.raises(ModelLoadError) as e:
        adapter_base(tmp_path / "lonely")
    assert str(tmp_path / "run" / "base") in str(e.value) and str(tmp_path / "lonely" / "../base") in str(e.value)
    sandbox = tmp_path / "sb"
    sandbox.mkdir()
    (sandbox / "adapter_config.json").write_text("{}")
    record_adapter_base(sandbox, "sandbox:policy")  # a name, resolved on whatever machine loads it
    from rlaifv.models.load import resolve_model_path

    assert adapter_base(sandbox) == resolve_model_path("sandbox:policy")


def test_copy_images_false_names_the_originals_by_absolute_path(tmp_path):
    from rlaifv.inputs import copy_into_run

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"\x89PNG fake")
    prompts = [Prompt("a", QUESTION, image="imgs/a.png"), Prompt("inline", QUESTION, image_bytes=(tmp_path / "imgs" / "a.png").read_bytes()),
               Prompt("missing", QUESTION, image="imgs/none.png")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    got, path = copy_into_run(prompts, tmp_path / "p.jsonl", tmp_path / "run", copy_images=False)
    assert path == tmp_path / "run" / "prompts" / "prompts.jsonl"
    by_id = {p.prompt_id: p for p in got}
    assert by_id["a"].image == str(tmp_path / "imgs" / "a.png") and by_id["missing"].image == str(tmp_path / "imgs" / "none.png")
    assert by_id["inline"].image.startswith("images/") and by_id["inline"].image_bytes is None  # inline bytes become a file of the run
    got, _ = copy_into_run(prompts, tmp_path / "p.jsonl", tmp_path / "run2")  # copying: the missing one stays absolute,
    by_id = {p.prompt_id: p for p in got}  # so the stage that loads it names it (or rejects it)
    assert by_id["missing"].image == str(tmp_path / "imgs" / "none.png")
    assert by_id["a"].image.startswith("images/") and by_id["inline"].image.startswith("images/")
    assert len(list((tmp_path / "run2" / "prompts" / "images").iterdir())) == 2  # same bytes, two names: a.png and the inline .img
    again, same = copy_into_run(got, path, tmp_path / "run")  # the run's copy given back: used as it is
    assert same == path
