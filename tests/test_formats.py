"""Tests for rlaifv.formats: TRL vision preference format and the RLAIF-V-Dataset schema."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlaifv.formats import RLAIFV_COLUMNS, from_rlaifv_dataset, to_rlaifv_dataset, to_trl
from rlaifv.records import PreferencePair, Prompt, RecordError


def png(path: Path, colour: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (4, 3), colour)
    img.putpixel((1, 2), (255 - colour[0], 7, 9))
    img.save(path, format="PNG")
    return path.read_bytes()


@pytest.fixture()
def data(tmp_path):
    """3 pairs over 2 prompts: one image by relative path, one inline bytes."""
    img_dir = tmp_path / "prompts"
    img_dir.mkdir()
    raw_a = png(img_dir / "a.png", (200, 10, 10))
    raw_b = png(tmp_path / "b.png", (10, 200, 10))
    prompts = {
        "a": Prompt("a", "Describe the image.", image="a.png", metadata={"question_type": "detailed description"}),
        "b": Prompt("b", "What colour is it?", image_bytes=raw_b),
    }
    pairs = [
        PreferencePair("a", "Describe the image.", "a.png", "A red square.", "A blue circle.", "a#0", "a#1", 0.0, -2.0),
        PreferencePair("a", "Describe the image.", "a.png", "A red square.", "A red dog.", "a#0", "a#2", 0.0, -1.0),
        PreferencePair("b", "What colour is it?", None, "Green.", "Purple and\nyellow.", "b#3", "b#1", -1.0, -3.0,
                       provenance={"generator_model": "gen", "labeler_model": "lab"}),
    ]
    return prompts, pairs, img_dir, {"a": raw_a, "b": raw_b}


def test_trl_columns_and_load(data, tmp_path):
    prompts, pairs, img_dir, raw = data
    ds = to_trl(pairs, prompts, img_dir, tmp_path / "trl")
    assert ds.column_names == ["images", "prompt", "chosen", "rejected", "pair_id"]
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "trl" / "train.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names == ["images", "prompt", "chosen", "rejected", "pair_id"]
    assert loaded.features["images"] == ds.features["images"]
    row = loaded[2]
    assert row["pair_id"] == "b#3>b#1"
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                          {"type": "text", "text": "What colour is it?"}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "Green."}]}]
    assert row["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": "Purple and\nyellow."}]}]
    for i, key in enumerate("aab"):
        (img,) = loaded[i]["images"]
        expected = np.asarray(Image.open(io.BytesIO(raw[key])).convert("RGB"))
        assert np.array_equal(np.asarray(img.convert("RGB")), expected)
    stored = pq.read_table(tmp_path / "trl" / "train.parquet").column("images").to_pylist()
    assert [cell[0]["bytes"] for cell in stored] == [raw["a"], raw["a"], raw["b"]]  # original bytes


def test_rlaifv_round_trip(data, tmp_path):
    prompts, pairs, img_dir, raw = data
    to_rlaifv_dataset(pairs, prompts, img_dir, tmp_path / "rv", ds_name="mine")
    path = tmp_path / "rv" / "RLAIF-V-Dataset_000.parquet"
    table = pq.read_table(path)
    assert tuple(table.column_names) == RLAIFV_COLUMNS
    rows = table.to_pylist()
    assert [r["idx"] for r in rows] == ["0", "1", "2"]
    assert json.loads(rows[0]["origin_split"]) == {"model": "", "feedback_model": "", "type": "detailed description"}
    assert json.loads(rows[2]["origin_split"])["model"] == "gen"
    assert rows[0]["image_path"] == "a.png"

    new_prompts, new_pairs = from_rlaifv_dataset(path, tmp_path / "imported")
    assert [p.prompt_id for p in new_prompts] == ["mine/0", "mine/1", "mine/2"]
    assert [(p.question, p.chosen, p.rejected) for p in new_pairs] == [(p.question, p.chosen, p.rejected) for p in pairs]
    for prompt, key in zip(new_prompts, "aab"):
        stored = Path(prompt.image).read_bytes()
        assert stored == raw[key]  # identical bytes, never re-encoded
        assert Path(prompt.image).name == hashlib.sha256(stored).hexdigest()[:32] + ".png"
    assert len(list((tmp_path / "imported").iterdir())) == 2  # one file per distinct image
    assert new_prompts[0].metadata["question_type"] == "detailed description"
    assert new_pairs[0].id == "mine/0#0>mine/0#1" and new_pairs[0].chosen_score > new_pairs[0].rejected_score

    inline, _ = from_rlaifv_dataset(path, None)
    assert [p.image_bytes for p in inline] == [raw["a"], raw["a"], raw["b"]] and inline[0].image is None


def test_rows_sharing_a_prompt_become_one_prompt(data, tmp_path):
    prompts, pairs, img_dir, _ = data
    to_rlaifv_dataset(pairs[:2], prompts, img_dir, tmp_path / "rv")
    path = tmp_path / "rv" / "RLAIF-V-Dataset_000.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("idx"), "idx", [["7", "7"]])
    pq.write_table(table, path)
    new_prompts, new_pairs = from_rlaifv_dataset(path, None)
    assert [p.prompt_id for p in new_prompts] == ["rlaifv/7"]
    assert [p.id for p in new_pairs] == ["rlaifv/7#0>rlaifv/7#1", "rlaifv/7#0>rlaifv/7#2"]


@pytest.mark.parametrize("column, value, message", [
    ("chosen", None, "chosen is empty"),
    ("origin_split", "{not json", "origin_split is not a JSON string"),
    ("image", {"bytes": None, "path": "x.png"}, "image has no bytes"),
    ("image", {"bytes": b"not an image", "path": "x.png"}, "image bytes are not a readable image"),
])
def test_malformed_row_is_named(data, tmp_path, column, value, message):
    prompts, pairs, img_dir, _ = data
    to_rlaifv_dataset(pairs, prompts, img_dir, tmp_path / "rv")
    path = tmp_path / "rv" / "RLAIF-V-Dataset_000.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[1][column] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    with pytest.raises(RecordError, match=rf"row 1 \(0-based; ds_name='rlaifv', idx='1'\): {message}"):
        from_rlaifv_dataset(path, tmp_path / "imported")


def test_missing_column_and_unknown_prompt(data, tmp_path):
    prompts, pairs, img_dir, _ = data
    to_trl(pairs, prompts, img_dir, tmp_path / "trl")
    bad = tmp_path / "trl" / "train.parquet"
    with pytest.raises(RecordError, match="missing column"):
        from_rlaifv_dataset(bad, None)
    with pytest.raises(RecordError, match="prompt 'zz'"):
        to_trl([PreferencePair("zz", "q", None, "a", "b", "zz#0", "zz#1", 0.0, -1.0)], prompts, img_dir, tmp_path / "x")
