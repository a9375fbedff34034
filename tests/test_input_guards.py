"""Issue 11, points 3, 4 and 12 (images): every PIL mode read to the right RGB pixels, prompts
longer than the model's context refused before any forward, a pixel limit checked from the
image header, and ``export`` refusing files that are not images. Expected values by hand."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlaifv.images import ImageError, load_image
from rlaifv.records import Prompt


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _load(data: bytes, pid: str = "p1", **kw) -> Image.Image:
    return load_image(Prompt(pid, "q?", image_bytes=data), **kw)


# ----------------------------------------------------------------------------- point 3: modes


def test_16bit_grayscale_png_is_scaled_not_white() -> None:
    """The reported defect: convert('RGB') on I;16 saturated every nonzero pixel to 255."""
    img = Image.fromarray(np.array([[0, 32768, 65535, 257, 128]], dtype=np.uint16))
    data = _png_bytes(img)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = _load(data)
    # round(v * 255 / 65535): 0 -> 0, 32768 -> 127.502 -> 128, 65535 -> 255, 257 -> 1, 128 -> 0.498 -> 0
    assert [out.getpixel((x, 0)) for x in range(5)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (1, 1, 1), (0, 0, 0)]


def test_16bit_big_endian_and_32bit_integer_modes() -> None:
    raw = np.array([[0, 32768, 65535]], dtype=">u2").tobytes()
    big = Image.frombytes("I;16B", (3, 1), raw)
    buf = io.BytesIO()
    big.save(buf, format="TIFF")
    out = _load(buf.getvalue())
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    pgm = io.BytesIO()  # a 16-bit PGM opens as mode I with values 0..65535
    pgm.write(b"P5 3 1 65535\n" + raw)
    assert Image.open(io.BytesIO(pgm.getvalue())).mode == "I"
    assert [_load(pgm.getvalue()).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32bit_integer_outside_16bit_range_is_an_error_naming_the_prompt() -> None:
    img = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    with pytest.raises(ImageError, match=r"prompt 'big-int'.*\[0, 70000\].*0\.\.65535"):
        _load(buf.getvalue(), "big-int")


def _tiff_float(values: list[float]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.array([values], dtype=np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def test_float_images_follow_the_documented_rule() -> None:
    # all within [0, 1]: normalised, x 255 rounded half up: 0.5 -> 127.5 -> 128, 0.2 -> 51
    out = _load(_tiff_float([0.0, 0.5, 1.0, 0.2]))
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 51]
    # a value above 1: the 0..255 scale, as is (rounded half up): 2.0 -> 2, 127.5 -> 128
    out = _load(_tiff_float([0.5, 2.0, 127.5, 255.0]))
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [1, 2, 128, 255]
    with pytest.raises(ImageError, match=r"prompt 'neg'.*\[-1, 1\].*expected \[0, 1\] or \[0, 255\]"):
        _load(_tiff_float([-1.0, 1.0]), "neg")
    with pytest.raises(ImageError, match=r"prompt 'nan'.*NaN"):
        _load(_tiff_float([0.0, float("nan")]), "nan")


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 128), (255, 0, 0, 128)])
    out = _load(_png_bytes(rgba))
    # c * a/255 + 255 * (1 - a/255): transparent -> white; black at 128 -> 127; red at 128 -> (255, 127, 127)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (127, 127, 127), (255, 127, 127)]
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (100, 255)])
    out = _load(_png_bytes(la))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (100, 100, 100)]


def test_palette_with_and_without_transparency() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * (254 * 3))
    pal.putdata([0, 1])
    opaque = _load(_png_bytes(pal))
    assert [opaque.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (10, 20, 30)]
    see_through = _load(_png_bytes(pal, transparency=0))  # index 0 transparent: white, not black
    assert [see_through.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (10, 20, 30)]
    gray = Image.new("L", (2, 1))
    gray.putdata([7, 9])
    assert _load(_png_bytes(gray, transparency=7)).getpixel((0, 0)) == (255, 255, 255)  # tRNS on L


def test_cmyk_ycbcr_and_bilevel() -> None:
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
    buf = io.BytesIO()
    cmyk.save(buf, format="TIFF")
    out = _load(buf.getvalue())
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (0, 255, 255), (0, 0, 0)]
    ycc = Image.new("YCbCr", (1, 1), (255, 128, 128))  # Y 255, neutral chroma: white
    buf = io.BytesIO()
    ycc.save(buf, format="JPEG", quality=100)
    assert all(c >= 250 for c in _load(buf.getvalue()).getpixel((0, 0)))
    bw = Image.new("1", (2, 1))
    bw.putdata([0, 1])
    out = _load(_png_bytes(bw))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (2, 1))
    img.putdata([(255, 0, 0), (0, 0, 255)])  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    out = _load(buf.getvalue())
    assert out.size == (1, 2)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((0, 1)) == (0, 0, 255)  # red on top


# ----------------------------------------------------------------------------- point 12: pixel limit


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (8-bit gray) and whose data is a stub: the pixel
    limit must refuse it from the header, without decoding (or allocating) anything."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header() -> None:
    from rlaifv.images import DEFAULT_MAX_IMAGE_PIXELS

    assert DEFAULT_MAX_IMAGE_PIXELS == 40_000_000
    with pytest.raises(ImageError, match=r"prompt 'huge'.*12000x12000 = 144\.0 megapixels.*max_image_pixels 40"):
        _load(_png_header_only(12000, 12000), "huge")
    small = _png_bytes(Image.new("RGB", (10, 10), (1, 2, 3)))
    with pytest.raises(ImageError, match=r"prompt 'p1'.*10x10.*max_image_pixels 5e-05"):
        _load(small, max_pixels=50)  # configurable
    assert _load(small, max_pixels=100).getpixel((0, 0)) == (1, 2, 3)  # at the limit: accepted
    # a limit above PIL's own bomb limit (2 x 89.5 M pixels) is honoured: the header passes ours,
    # then the stub data fails to decode (a bad image naming the prompt, not a bomb error)
    with pytest.raises(ImageError, match=r"prompt 'p1': cannot decode image inline image_bytes"):
        _load(_png_header_only(20000, 10000), max_pixels=300_000_000)


def test_pil_decompression_bomb_is_a_bad_image_naming_the_prompt() -> None:
    # our limit off (0): PIL's own limit refuses 400 M pixels at open
    with pytest.raises(ImageError, match=r"prompt 'bomb'.*too large to decode"):
        _load(_png_header_only(20000, 20000), "bomb", max_pixels=0)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's setting is restored after each open


def test_sample_stage_rejects_an_image_above_the_configured_limit(tmp_path: Path, tiny_sandbox_model) -> None:
    from rlaifv.sandbox.prompts import write_sandbox_prompts
    from rlaifv.stages.feedback import run_sample
    from rlaifv.stages.sample import SampleConfig
    from rlaifv.store import read_records
    from rlaifv.records import Candidate

    path = write_sandbox_prompts(tmp_path / "p", 1)
    big = Image.new("RGB", (200, 100), (9, 9, 9))
    big.save(tmp_path / "p" / "big.png")
    with path.open("a") as f:
        f.write(json.dumps({"prompt_id": "big", "question": "Describe the image in detail.", "image": "big.png"}) + "\n")
    prompts = list(read_records(path, Prompt))
    cfg = SampleConfig(model=str(tiny_sandbox_model), n=2, max_new_tokens=4, max_image_pixels=96 * 96)
    res = run_sample(cfg, prompts, path, tmp_path / "c", "skip")
    assert res.rejected == ["big"]
    rejects = [json.loads(x) for x in (tmp_path / "c" / "rejects.jsonl").read_text().splitlines()]
    assert "200x100" in json.dumps(rejects) and "max_image_pixels" in json.dumps(rejects)
    assert {c.prompt_id for c in read_records(tmp_path / "c", Candidate)} == {"val-000000"}


# ----------------------------------------------------------------------------- point 12: export


def _export_run(tmp_path: Path, image_name: str) -> Path:
    from rlaifv.records import PreferencePair
    from rlaifv.store import RecordStore

    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    prompt = Prompt("p1", "What is it?", image=image_name)
    (run / "prompts" / "prompts.jsonl").write_text(json.dumps(prompt.to_dict()) + "\n")
    pair = PreferencePair("p1", "What is it?", image_name, "A cat.", "A dog.", "p1#0", "p1#1", 0.0, -1.0)
    with RecordStore(run / "pairs", PreferencePair) as store:
        store.write([pair])
    return run


def test_export_refuses_a_prompt_path_that_is_not_an_image(tmp_path: Path) -> None:
    from rlaifv.formats import to_rlaifv_dataset, to_trl
    from rlaifv.records import PreferencePair, RecordError

    run = _export_run(tmp_path, "../../secret.txt")
    pairs = [PreferencePair("p1", "What is it?", "../../secret.txt", "A cat.", "A dog.", "p1#0", "p1#1", 0.0, -1.0)]
    prompts = {"p1": Prompt("p1", "What is it?", image="../../secret.txt")}
    base = run / "prompts" / "x" / "y"  # ../../secret.txt from here is run/prompts/secret.txt
    base.mkdir(parents=True)
    (run / "prompts" / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    for export in (to_trl, to_rlaifv_dataset):
        with pytest.raises(RecordError, match=r"pair 'p1#0>p1#1': prompt 'p1'.*secret\.txt is not a readable image"):
            export(pairs, prompts, base, tmp_path / "out")
        assert not (tmp_path / "out").exists()  # nothing written
    big = _png_header_only(9000, 9000)  # 81 M pixels: above the default limit
    (run / "big.png").write_bytes(big)
    prompts = {"p1": Prompt("p1", "What is it?", image="big.png")}
    with pytest.raises(RecordError, match=r"pair 'p1#0>p1#1': prompt 'p1'.*9000x9000.*max_image_pixels"):
        to_trl(pairs, prompts, run, tmp_path / "out")


def test_export_cli_names_the_pair_in_one_line(tmp_path: Path, rlaifv_bin) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    run = _export_run(tmp_path, "../../passwd")
    proc = subprocess.run(rlaifv_bin + ["export", "--run", str(run), "--format", "trl", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, env={**__import__("os").environ, "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "pair 'p1#0>p1#1'" in proc.stdout + proc.stderr and "not a readable image" in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()


# ----------------------------------------------------------------------------- point 4: prompt length

LONG = "Is there a red circle at the top left of the picture? " * 2000  # about 108k characters


@pytest.fixture(scope="module")
def tiny(tiny_sandbox_model):
    from rlaifv.models.load import load_vlm

    return load_vlm(str(tiny_sandbox_model), "cpu", "float32")


@pytest.fixture()
def no_forward(tiny, monkeypatch):
    """Count the model's forward calls (generate runs forward too)."""
    model = tiny[0]
    calls = []
    original = type(model).forward

    def counted(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(type(model), "forward", counted)
    return calls


def _scene():
    from rlaifv.sandbox.render import render
    from rlaifv.sandbox.world import World

    return render(World().scene(0))


def test_limits_by_hand(tiny) -> None:
    from rlaifv.models.context import model_context, prompt_token_limit

    model, _ = tiny
    assert model_context(model) == 512  # the tiny sandbox model's max_position_embeddings
    assert prompt_token_limit(model, 0, 100, "sample")[0] == 412  # context - max_new_tokens
    assert prompt_token_limit(model, 0, 0, "conquer")[0] == 512
    assert prompt_token_limit(model, 40, 100, "sample")[0] == 40  # configured
    with pytest.warns(UserWarning, match="fills the model's whole context of 512"):
        assert prompt_token_limit(model, 0, 512, "sample-x")[0] == 512
    from rlaifv.config import ConfigError

    with pytest.raises(ConfigError, match="sample.max_prompt_tokens"):
        prompt_token_limit(model, -1, 0, "sample")


def test_prompt_lengths_equal_a_full_encoding(tiny) -> None:
    from rlaifv.models.chat import encode_prompt
    from rlaifv.models.context import prompt_lengths

    _, processor = tiny
    image = _scene()
    questions = ["Is there a circle?", "Describe the image in detail.", "Is there a large red star at the bottom right?", "?"]
    full = [encode_prompt(processor, image, q)["input_ids"].shape[1] for q in questions]
    assert prompt_lengths(processor, image, questions) == full
    history = [("Describe the image.", "There is a red circle.")]
    assert prompt_lengths(processor, image, questions[:2], history) == [encode_prompt(processor, image, q, history)["input_ids"].shape[1]
                                                                        for q in questions[:2]]


def test_sample_refuses_an_over_long_prompt_before_any_forward(tiny, no_forward) -> None:
    from rlaifv.models.context import PromptTooLongError
    from rlaifv.stages.sample import SampleConfig, sample

    model, processor = tiny
    image = _scene()
    good, long = Prompt("good", "Describe the image in detail."), Prompt("long", LONG)
    with pytest.raises(PromptTooLongError, match=r"prompt 'long': the prompt is at least \d+ tokens .*108000 characters.*longer than 504"):
        sample(model, processor, [good, long], [image, image], SampleConfig(n=2, max_new_tokens=8))
    assert no_forward == []
    # the configured limit, exactly at and one below the good prompt's length (34 tokens + image)
    from rlaifv.models.chat import encode_prompt

    n = encode_prompt(processor, image, good.question)["input_ids"].shape[1]
    with pytest.raises(PromptTooLongError, match=rf"prompt 'good': the prompt is {n} tokens.*longer than {n - 1} \(sample.max_prompt_tokens"):
        sample(model, processor, [good], [image], SampleConfig(n=2, max_new_tokens=8, max_prompt_tokens=n - 1))
    assert no_forward == []
    assert len(sample(model, processor, [good], [image], SampleConfig(n=2, max_new_tokens=4, max_prompt_tokens=n))) == 2


def test_conquer_refuses_an_over_long_question_before_any_forward(tiny, no_forward) -> None:
    from rlaifv.models.context import PromptTooLongError
    from rlaifv.records import PolarQuestion
    from rlaifv.stages.conquer import ConquerConfig, conquer

    model, processor = tiny
    qs = [PolarQuestion("p#0/0", "There is a circle.", "Is there a circle?"), PolarQuestion("p#0/1", "x", LONG)]
    with pytest.raises(PromptTooLongError, match=r"claim 'p#0/1': the prompt is \d+ tokens.*longer than 512 \(the model's context"):
        conquer(model, processor, [(_scene(), qs)], ConquerConfig())
    assert no_forward == []
    assert len(conquer(model, processor, [(_scene(), qs[:1])], ConquerConfig())) == 1


def test_best_of_n_refuses_an_over_long_prompt_before_any_forward(tiny, no_forward) -> None:
    from rlaifv.models.context import PromptTooLongError
    from rlaifv.stages.bestofn import BestOfNConfig, BestOfNModels, ScoringModel, best_of_n
    from rlaifv.stages.sample import SampleConfig

    model, processor = tiny
    models = BestOfNModels(policy=ScoringModel("tiny", model, processor))
    cfg = BestOfNConfig(scorer="perplexity", sample=SampleConfig(n=2, max_new_tokens=8))
    with pytest.raises(PromptTooLongError, match=r"prompt 'long'"):
        best_of_n(models, [Prompt("long", LONG)], [_scene()], cfg)
    assert no_forward == []


def test_training_max_length_defaults_to_the_context(tiny, tmp_path: Path) -> None:
    from rlaifv.records import PreferencePair, RecordError
    from rlaifv.training.data import prepare_examples, train_max_length

    model, processor = tiny
    assert train_max_length(model, 0) == 512 and train_max_length(model, 64) == 64
    _scene().save(tmp_path / "a.png")
    prompts = {"a": Prompt("a", "Describe.", image="a.png"), "b": Prompt("b", LONG, image="a.png")}
    good = PreferencePair("a", "Describe.", "a.png", "A circle.", "A star.", "a#0", "a#1", 0.0, -1.0)
    long = PreferencePair("b", LONG, "a.png", "A circle.", "A star.", "b#0", "b#1", 0.0, -1.0)
    with pytest.raises(RecordError, match=r"pair 'b#0>b#1': the pair is at least \d+ tokens.*longer than max_length 512"):
        prepare_examples([good, long], prompts, tmp_path, processor, train_max_length(model, 0))
    kept = prepare_examples([good, long], prompts, tmp_path, processor, 512, "skip", tmp_path / "out")
    assert [e.pair.id for e in kept] == ["a#0>a#1"]
    assert "max_length 512" in (tmp_path / "out" / "rejects.jsonl").read_text()


def _prompts_with_a_long_question(tmp_path: Path) -> Path:
    from rlaifv.sandbox.prompts import write_sandbox_prompts

    path = write_sandbox_prompts(tmp_path / "p", 2)
    with path.open("a") as f:
        f.write(json.dumps({"prompt_id": "long", "question": LONG, "image": "images/val-000000.png"}) + "\n")
    return path


def test_cli_sample_long_prompt_is_an_error_or_a_reject(tmp_path: Path, rlaifv_bin, tiny_sandbox_model) -> None:
    """The reported defect: batched with good prompts, an over-long one ran out of memory even with skip."""
    path = _prompts_with_a_long_question(tmp_path)
    base = rlaifv_bin + ["sample", "--prompts", str(path), "--model", str(tiny_sandbox_model), "--n", "2", "--max-new-tokens", "4"]
    env = {**__import__("os").environ, "COLUMNS": "300", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(base + ["--out", "c1"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "'long'" in out and "longer than 508" in out
    proc = subprocess.run(base + ["--out", "c2", "--on-error", "skip"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rejects = [json.loads(x) for x in (tmp_path / "c2" / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["long"] and "longer than 508" in rejects[0]["reason"]
    lines = (tmp_path / "c2" / "shard-00000.jsonl").read_text().splitlines()
    assert sorted({json.loads(x)["prompt_id"] for x in lines}) == ["val-000000", "val-000001"]
