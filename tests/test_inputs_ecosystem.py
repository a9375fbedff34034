"""Prompts from what the ecosystem produces (issue 12.6): `datasets` parquet and save_to_disk folders with an
Image() column (made with the real `datasets` library), imagefolder-style folders, and import-rlaifv output."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from rlaifv.images import load_image
from rlaifv.inputs import source_kind
from rlaifv.records import Candidate, Prompt, RecordError
from rlaifv.store import read_inputs, read_records

from photos import cli_ok

QUESTION = "Describe the image in detail."


@pytest.fixture(autouse=True)
def _quiet():
    datasets.disable_progress_bars()



def _photos(folder: Path, n: int = 3) -> list[Path]:
    from rlaifv.sandbox.render import render
    from rlaifv.sandbox.world import World

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        render(World().scene(i)).save(folder / f"p{i}.png")
        paths.append(folder / f"p{i}.png")
    return paths


def _pixels(prompt: Prompt, base: Path) -> bytes:
    return load_image(prompt, base).tobytes()


def test_datasets_parquet_with_an_image_column_goes_through_sample(tmp_path, tiny_sandbox_model, monkeypatch):
    """The finding: such a parquet was accepted, then `sample` failed with a raw TypeError (the Image() cell, a
    {bytes, path} dict, reached the image loader). Three shapes `datasets` writes: bytes embedded (images
    made in memory), path only (PIL images opened from files), and TRL-style data (an `images` list, a
    conversational `prompt`, no id column)."""
    paths = _photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)  # `datasets` stores a file-backed image by the path it was opened with
    feats = datasets.Features({"id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image()})
    in_memory = [Image.open(p).copy() for p in paths]
    datasets.Dataset.from_dict({"id": [0, 1, 2], "question": [QUESTION] * 3, "image": in_memory}, features=feats).to_parquet("bytes.parquet")
    datasets.Dataset.from_dict({"id": [0, 1, 2], "question": [QUESTION] * 3, "image": [Image.open(p.relative_to(tmp_path)) for p in paths]},
                               features=feats).to_parquet("paths.parquet")
    trl_prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": QUESTION}]}]
    datasets.Dataset.from_dict({"images": [[im] for im in in_memory], "prompt": [trl_prompt] * 3,
                                "source": ["coco"] * 3}).to_parquet("trl.parquet")
    expected = [Image.open(p).convert("RGB").tobytes() for p in paths]
    for name, ids in (("bytes", ["0", "1", "2"]), ("paths", ["0", "1", "2"]), ("trl", ["row-0", "row-1", "row-2"])):
        prompts = read_inputs(tmp_path / f"{name}.parquet", Prompt, what="prompts")
        assert [p.prompt_id for p in prompts] == ids and all(p.question == QUESTION for p in prompts), name
        assert [_pixels(p, tmp_path) for p in prompts] == expected, name
    assert prompts[0].metadata == {"source": "coco"}  # unused columns are kept
    out = cli_ok(["sample", "--prompts", str(tmp_path / "paths.parquet"), "--model", str(tiny_sandbox_model), "--n", "2",
                "--max-new-tokens", "4", "--out", str(tmp_path / "cands")])
    assert "6 candidates" in out
    assert {c.prompt_id for c in read_records(tmp_path / "cands", Candidate)} == {"0", "1", "2"}


def test_save_to_disk_folders(tmp_path):
    paths = _photos(tmp_path / "photos")
    ds = datasets.Dataset.from_dict({"prompt_id": ["a", "b", "c"], "question": [QUESTION] * 3,
                                     "image": [str(p) for p in paths]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd2"))
    expected = [Image.open(p).convert("RGB").tobytes() for p in paths]
    for folder in ("ds", "dd", "dd2/test"):
        assert source_kind(tmp_path / folder) == "hf_disk"
        prompts = read_inputs(tmp_path / folder, Prompt, what="prompts")
        assert [p.prompt_id for p in prompts] == ["a", "b", "c"]
        assert [_pixels(p, tmp_path / folder) for p in prompts] == expected
    with pytest.raises(RecordError, match=r"splits \['test', 'train'\]; give one split's folder"):
        read_inputs(tmp_path / "dd2", Prompt)
    no_question = datasets.Dataset.from_dict({"image": [str(p) for p in paths]}).cast_column("image", datasets.Image())
    no_question.save_to_disk(str(tmp_path / "nq"))
    with pytest.raises(RecordError, match="no question column.*--question"):
        read_inputs(tmp_path / "nq", Prompt)
    assert [p.question for p in read_inputs(tmp_path / "nq", Prompt, question="What is shown?")] == ["What is shown?"] * 3


def test_image_folder_with_and_without_metadata(tmp_path):
    root = tmp_path / "photos"
    _photos(root, 2)
    _photos(root / "more", 1)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes((root / "p0.png").read_bytes())
    (root / "notes.txt").write_text("not an image")
    assert source_kind(root) == "image_folder"
    with pytest.raises(RecordError, match="image folder without a question column.*--question"):
        read_inputs(root, Prompt)
    prompts = read_inputs(root, Prompt, question=QUESTION)
    assert [p.prompt_id for p in prompts] == ["more/p0.png", "p0.png", "p1.png"]  # ids: paths inside the folder
    assert all(p.question == QUESTION and p.image == p.prompt_id for p in prompts)  # relative to the folder
    assert _pixels(prompts[0], root) == Image.open(root / "more" / "p0.png").convert("RGB").tobytes()
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "p0.png", "question": "How many shapes?", "id": "q7", "split": "a"}) + "\n")
    (root / "more" / "metadata.csv").write_text("file_name,question\np0.png,What colour is it?\n")
    got = {p.prompt_id: p for p in read_inputs(root, Prompt, question=QUESTION)}
    assert got["q7"].question == "How many shapes?" and got["q7"].metadata == {"split": "a", "file_name": "p0.png"}
    assert got["more/p0.png"].question == "What colour is it?" and got["p1.png"].question == QUESTION  # not listed: the default
    with pytest.raises(RecordError, match="p1.png: .*no question for p1.png.*--question"):  # not listed, no default
        read_inputs(root, Prompt)
    assert [p.prompt_id for p in read_inputs(root, Prompt, "skip")] == ["more/p0.png", "q7"]  # skip: the listed ones
    (root / "metadata.jsonl").write_text(json.dumps({"question": "no file"}) + "\n")
    with pytest.raises(RecordError, match="no file_name"):
        read_inputs(root, Prompt, question=QUESTION)


def test_feedback_on_an_image_folder_with_a_default_question(tmp_path, tiny_sandbox_model):
    """The README's "your own data" path: a folder of photos, one question, the run keeps its own copy."""
    _photos(tmp_path / "photos", 2)
    m = str(tiny_sandbox_model)
    cli_ok(["feedback", "--prompts", str(tmp_path / "photos"), "--question", QUESTION, "--policy", m, "--labeler", m, "--n", "2",
          "--max-new-tokens", "6", "--out", str(tmp_path / "run")])
    copy = list(read_records(tmp_path / "run" / "prompts" / "prompts.jsonl", Prompt))
    assert [p.prompt_id for p in copy] == ["p0.png", "p1.png"] and all(p.image.startswith("images/") for p in copy)
    assert len(list(read_records(tmp_path / "run" / "candidates", Candidate))) == 4


def test_import_rlaifv_output_feeds_feedback_directly(tmp_path, rlaifv_bin):
    """import-rlaifv writes image paths relative to its folder (no absolute path), and its prompts file (or the
    folder itself) is a prompts input as it is; the import is idempotent (a rerun has nothing to do)."""
    from rlaifv.formats import RLAIFV_COLUMNS, import_rlaifv, rlaifv_features

    paths = _photos(tmp_path / "photos", 2)
    rows = [{"ds_name": "mine", "image": {"bytes": p.read_bytes(), "path": p.name}, "question": QUESTION, "chosen": "A dot.",
             "rejected": f"Two cats {i}.", "origin_dataset": "x", "origin_split": "{}", "idx": str(i), "image_path": p.name}
            for i, p in enumerate(paths)]
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in RLAIFV_COLUMNS}, features=rlaifv_features()).to_parquet(str(tmp_path / "src.parquet"))
    info, before = import_rlaifv(tmp_path / "src.parquet", tmp_path / "imp")
    assert (info["prompts"], info["pairs"], before) == (2, 2, False)
    assert import_rlaifv(tmp_path / "src.parquet", tmp_path / "imp")[1] is True  # rerun: nothing to do
    assert source_kind(tmp_path / "imp") is None  # a folder holding prompts.jsonl: read as a prompts folder
    for source in (tmp_path / "imp" / "prompts.jsonl", tmp_path / "imp"):
        prompts = read_inputs(source, Prompt, what="prompts")
        assert [p.prompt_id for p in prompts] == ["mine/0", "mine/1"] and not any(Path(p.image).is_absolute() for p in prompts)
        assert [_pixels(p, tmp_path / "imp") for p in prompts] == [Image.open(p).convert("RGB").tobytes() for p in paths]
