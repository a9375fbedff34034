"""The bad-input corpus: every kind of bad input a demanding user feeds the CLI, with the outcome
the project promises for it (issue 11, "What to build").

A :class:`Case` is (name, files, CLI argv, expected outcome); ``expected`` is one of

* ``error``: exit code 2, exactly one output line (rich progress-bar lines aside) naming the
  record / key / file (one of ``Case.names``, regular expressions), no "Traceback";
* ``reject``: with ``--on-error skip``: exit 0, a ``rejects.jsonl`` entry (anywhere under the run
  folder) whose source or reason names the bad record, every good record of the same input
  processed (``Group.good`` ids in ``Group.outputs``), the output says that records were rejected;
* ``ok``: exit 0, the case's records processed, none of them rejected.

Cases that share one CLI run (several bad lines in one prompts file with skip, say) belong to
the same :class:`Group`: the group owns the files and the argv, so one run serves them all.
``"{model}"`` in an argv stands for a model folder (tests: the tiny model of ``conftest.py``).

``tests/test_bad_inputs.py`` runs every case and checks its outcome; ``python
tests/test_bad_inputs.py OUT [--model M]`` runs the corpus outside pytest and prints the table of
expected vs actual outcomes (``write_corpus`` writes the files alone, with ``OUT/corpus.json``).
"""

from __future__ import annotations

import functools
import io
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EXPECTED = ("error", "reject", "ok")
Files = dict[str, bytes]


@dataclass(frozen=True)
class Group:
    """One CLI run: its input files (relative path -> bytes, built from the model folder) and argv."""

    name: str
    argv: tuple[str, ...]
    files: Callable[[Path], Files]
    outputs: str = ""  # folder of output records (relative), where good records must show up
    good: tuple[str, ...] = ()  # ids of the good records that must be processed (reject / ok cases)
    cost: float = 1.0  # rough relative run time: the slowest runs start first


@dataclass(frozen=True)
class Case:
    """One bad (or tricky) input and the outcome the project promises for it."""

    name: str
    kind: str  # what the issue calls it
    group: str
    expected: str
    names: tuple[str, ...]  # regexes: the error line / rejects entry must match one (case-insensitive)
    checks: tuple[tuple[str, str, Any], ...] = ()  # (json file, dotted key, value) that must hold afterwards
    note: str = ""
    record: str = ""  # ok cases: the id whose output must exist (and that must not be rejected)


# ----------------------------------------------------------------------------------- images

def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _colour_png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 48), (235, 235, 235))
    ImageDraw.Draw(img).rectangle((12, 12, 35, 35), fill=colour)
    return _png(img)


def _odd_images() -> Files:
    """Modes PIL opens that a plain ``convert("RGB")`` gets wrong (pixel values: another test)."""
    from PIL import Image

    gray16 = Image.new("I;16", (48, 48))
    gray16.putdata([(x * 1365) % 65536 for x in range(48 * 48)])
    buf = io.BytesIO()
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(buf, format="JPEG")
    pal = Image.new("P", (48, 48), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (12, 12, 36, 36))
    pal_buf = io.BytesIO()
    pal.save(pal_buf, format="PNG", transparency=0)
    rot = Image.new("RGB", (48, 32), (0, 128, 255))
    exif = rot.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when shown
    rot_buf = io.BytesIO()
    rot.save(rot_buf, format="JPEG", exif=exif.tobytes())
    return {"gray16.png": _png(gray16), "cmyk.jpg": buf.getvalue(), "palette_trns.png": pal_buf.getvalue(),
            "exif_rot.jpg": rot_buf.getvalue()}


@functools.lru_cache(maxsize=2)
def solid_png(width: int, height: int, value: int = 128) -> bytes:
    """A one-colour 8-bit grayscale PNG written by hand: 12000 x 12000 pixels in about 140 kB."""
    comp = zlib.compressobj(6)
    row = b"\x00" + bytes([value]) * width
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------- files

GOOD_A = {"prompt_id": "good-a", "question": "Describe the image.", "image": "a.png"}
GOOD_B = {"prompt_id": "good-b", "question": "What colour is the shape in the middle of this picture, and how large is it?",
          "image": "b.png"}
GOOD_IDS = ("good-a", "good-b")


def _line(d: Any) -> bytes:
    return (json.dumps(d) + "\n").encode()


def _two_images() -> Files:
    return {"a.png": _colour_png((220, 30, 30)), "b.png": _colour_png((30, 30, 220))}


#: Bad prompt lines: (case suffix, kind, line bytes, id the record would have, if any).
BAD_LINES: list[tuple[str, str, bytes, str | None]] = [
    ("bad_json", "a line that is not JSON", b'{"prompt_id": "broken", "question": \n', None),
    ("json_array", "a JSON array line", b'["good-c", "Describe the image.", "a.png"]\n', None),
    ("missing_id", "missing prompt_id", _line({"question": "Describe the image.", "image": "a.png"}), None),
    ("nonstring_id", "non-string prompt_id", _line({"prompt_id": 123, "question": "Describe the image.", "image": "a.png"}), None),
    ("duplicate_id", "duplicate prompt_id", _line({**GOOD_A, "question": "Describe the image again."}), None),
    ("empty_question", "empty question", _line({"prompt_id": "emptyq", "question": "  ", "image": "a.png"}), "emptyq"),
    ("non_utf8", "non-UTF-8 bytes", b'{"prompt_id": "latin1", "question": "Caf\xe9 au lait?", "image": "a.png"}\n', "latin1"),
    ("bad_base64", "bad base64 image_bytes", _line({"prompt_id": "b64", "question": "Describe the image.", "image_bytes": "no%base64!"}), "b64"),
    ("image_int", '"image": 123', _line({"prompt_id": "imgint", "question": "Describe the image.", "image": 123}), "imgint"),
]

LONG_QUESTION = ("Describe every object in the image, " * 2900)[:100_000]

#: Prompts whose line is fine but whose image or length is not: (suffix, kind, record, extra files).
BAD_RECORDS: list[tuple[str, str, dict, Files]] = [
    ("missing_image", "missing image file", {"prompt_id": "noimg", "question": "Describe the image.", "image": "nope.png"}, {}),
    ("corrupt_image", "corrupt image", {"prompt_id": "corrupt", "question": "Describe the image.", "image": "corrupt.png"},
     {"corrupt.png": _colour_png((0, 200, 0))[:60] + b"\x00garbage" * 8}),
    ("zero_byte_image", "0-byte image", {"prompt_id": "empty-img", "question": "Describe the image.", "image": "zero.png"},
     {"zero.png": b""}),
    ("huge_png", "12000x12000 PNG beyond the pixel limit", {"prompt_id": "huge", "question": "Describe the image.", "image": "huge.png"},
     {"huge.png": b"SOLID"}),  # placeholder, replaced by solid_png(12000, 12000) when written
    ("long_question", "100k-character question", {"prompt_id": "longq", "question": LONG_QUESTION, "image": "a.png"}, {}),
]


def _record_files(extra: Files) -> Files:
    return {k: (solid_png(12000, 12000) if v == b"SOLID" else v) for k, v in extra.items()}


def _prompts_with(lines: list[bytes], extra: Files | None = None) -> Callable[[Path], Files]:
    """good-a, the given lines, good-b: as prompts.jsonl with the two good images."""
    return lambda model: {"prompts.jsonl": _line(GOOD_A) + b"".join(lines) + _line(GOOD_B), **_two_images(),
                          **_record_files(extra or {})}


def _good_prompts(model: Path) -> Files:
    return {"prompts.jsonl": _line(GOOD_A) + _line(GOOD_B), **_two_images()}


def _model_copy(model: Path, drop: str = "", truncate: str = "") -> Files:
    """The model folder's files under ``m/``, one left out or cut to half its size."""
    out: Files = {}
    for f in sorted(Path(model).iterdir()):
        if f.is_file() and f.name != drop:
            data = f.read_bytes()
            out[f"m/{f.name}"] = data[: len(data) // 2] if f.name == truncate else data
    return out


def _hf_parquet(model: Path) -> Files:
    """A prompts parquet written by Hugging Face ``datasets`` with an ``Image()`` column."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    feats = datasets.Features({"prompt_id": datasets.Value("string"), "question": datasets.Value("string"), "image": datasets.Image()})
    imgs = _two_images()
    ds = datasets.Dataset.from_dict({"prompt_id": list(GOOD_IDS), "question": [GOOD_A["question"], GOOD_B["question"]],
                                     "image": [{"bytes": imgs["a.png"], "path": "a.png"}, {"bytes": imgs["b.png"], "path": "b.png"}]},
                                    features=feats)
    with tempfile.TemporaryDirectory() as tmp:
        ds.to_parquet(f"{tmp}/p.parquet")
        return {"prompts.parquet": Path(f"{tmp}/p.parquet").read_bytes()}


def _pair(prompt: dict, chosen: str, rejected: str, k: int) -> dict:
    pid = prompt["prompt_id"]
    return {"prompt_id": pid, "question": prompt["question"], "image": prompt["image"], "chosen": chosen, "rejected": rejected,
            "chosen_id": f"{pid}#{k}", "rejected_id": f"{pid}#{k + 1}", "chosen_score": 0.0, "rejected_score": -1.0}


GOOD_PAIRS = [_pair(GOOD_A, "There is a red square in the middle.", "There is a blue circle at the top left.", 0),
              _pair(GOOD_B, "The shape in the middle is blue and large.", "The shape is red and small.", 0),
              _pair(GOOD_A, "A red square.", "A green star and a red square.", 2)]
BAD_PAIR_MISSING = {k: v for k, v in _pair(GOOD_B, "Blue.", "Red.", 2).items() if k != "chosen"}
BAD_PAIR_SAME = _pair(GOOD_B, "The shape is blue.", "The shape is blue.", 4)


def _train_files(lines: list[bytes], config: str = "") -> Callable[[Path], Files]:
    def files(model: Path) -> Files:
        out = {"pairs.jsonl": b"".join(lines), **_good_prompts(model)}
        return out | ({"train.yaml": config.encode()} if config else {})
    return files


def _truncated(d: dict) -> bytes:
    return json.dumps(d).encode()[:40]  # a last line cut short: no closing brace, no newline


def _export_files(model: Path) -> Files:
    """A run folder whose prompt's image path leads to a text file outside the run."""
    prompt = {"prompt_id": "leak", "question": "Describe the image.", "image": "../../secret.txt"}
    pair = {**_pair(prompt, "A cat.", "A dog.", 0), "kind": "pair", "schema_version": 1}
    return {"secret.txt": b"root:x:0:0:root:/root:/bin/bash\n", "run/prompts/prompts.jsonl": _line(prompt),
            "run/pairs/shard-00000.jsonl": _line(pair)}


def _rlaifv_parquet(model: Path) -> Files:
    """One RLAIF-V-Dataset row whose image is 12000 x 12000 pixels (a decompression bomb)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"ds_name": ["bomb"], "image": [{"bytes": solid_png(12000, 12000), "path": "huge.png"}], "question": ["Describe."],
            "chosen": ["Gray."], "rejected": ["A cat."], "origin_dataset": ["x"], "origin_split": ['{"type": "x"}'], "idx": ["0"],
            "image_path": ["huge.png"]}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return {"bomb.parquet": buf.getvalue()}


def _with(files: Callable[[Path], Files], extra: Files) -> Callable[[Path], Files]:
    return lambda model: {**files(model), **extra}


# ----------------------------------------------------------------------------------- runs and cases

SKIP = ("--on-error", "skip")


def sample_argv(n: str = "2", *extra: str, prompts: str = "prompts.jsonl", model: str = "{model}") -> tuple[str, ...]:
    return ("sample", "--prompts", prompts, "--out", "out", "--model", model, "--n", n, "--max-new-tokens", "4", *extra)


FEEDBACK = ("feedback", "--prompts", "prompts.jsonl", "--out", "run", "--policy", "{model}", "--labeler", "{model}")
FB_SMALL = ("--n", "2", "--max-new-tokens", "6")
TRAIN = ("train", "--pairs", "pairs.jsonl", "--prompts", "prompts.jsonl", "--model", "{model}", "--out", "dpo", "--batch-size", "2")
BON = ("best-of-n", "--prompts", "prompts.jsonl", "--out", "bon", "--policy", "{model}", "--reference", "{model}", "--n", "2",
       "--max-new-tokens", "4")


#: Kinds also run without skip (one run each: the error must name the line / record). The others
#: share their code path with one of these (read_records' line checks, the sample stage's image load).
RAISE_TOO = {"bad_json", "nonstring_id", "empty_question", "non_utf8", "image_int", "missing_image", "huge_png", "long_question"}


def _line_names(lineno: int, rid: str | None, file: str = "prompts.jsonl") -> tuple[str, ...]:
    return (rf"{re.escape(file)}(:| line ){lineno}\b",) + ((rf"\b{re.escape(rid)}\b",) if rid else ())


def _prompt_cases() -> tuple[list[Group], list[Case]]:
    """Malformed prompt lines and bad prompt records: all in one skip run, and one raise run each."""
    groups = [Group("lines_skip", sample_argv("2", *SKIP), _prompts_with([b for _, _, b, _ in BAD_LINES]), "out", GOOD_IDS, 2),
              Group("records_skip", sample_argv("2", *SKIP), _prompts_with([_line(r) for _, _, r, _ in BAD_RECORDS],
                    {k: v for *_, extra in BAD_RECORDS for k, v in extra.items()}), "out", GOOD_IDS, 3)]
    cases = []
    for i, (suffix, kind, raw, rid) in enumerate(BAD_LINES):
        cases.append(Case(f"prompts_{suffix}_skip", kind, "lines_skip", "reject", _line_names(i + 2, rid)))
        if suffix in RAISE_TOO:
            groups.append(Group(f"lines_{suffix}", sample_argv(), _prompts_with([raw])))
            cases.append(Case(f"prompts_{suffix}_raise", kind, f"lines_{suffix}", "error", _line_names(2, rid)))
    for i, (suffix, kind, rec, extra) in enumerate(BAD_RECORDS):
        cases.append(Case(f"prompts_{suffix}_skip", kind, "records_skip", "reject", _line_names(i + 2, rec["prompt_id"])))
        if suffix in RAISE_TOO:
            groups.append(Group(f"records_{suffix}", sample_argv(), _prompts_with([_line(rec)], extra), cost=1.5))
            cases.append(Case(f"prompts_{suffix}_raise", kind, f"records_{suffix}", "error", _line_names(2, rec["prompt_id"])))
    return groups, cases


def _image_mode_files(model: Path) -> Files:
    imgs = _odd_images()
    lines = [_line({"prompt_id": Path(name).stem, "question": "Describe the image.", "image": name}) for name in imgs]
    return {"prompts.jsonl": b"".join(lines), **imgs}


def _file_cases() -> tuple[list[Group], list[Case]]:
    """Image modes that must work, and whole prompts files that are empty, a folder or a HF parquet."""
    groups = [Group("image_modes", sample_argv(), _image_mode_files, "out", cost=1.5),
              Group("empty_prompts", FEEDBACK + FB_SMALL, lambda m: {"prompts.jsonl": b""}),
              Group("prompts_dir", sample_argv(prompts="imgs"), lambda m: {"imgs/a.png": _colour_png((200, 0, 0))}),
              Group("hf_parquet", sample_argv(prompts="prompts.parquet"), _hf_parquet, "out", GOOD_IDS, 1.5)]
    cases = [Case(f"image_{Path(name).stem}", f"{Path(name).stem} image", "image_modes", "ok", (),
                  note="pixel values: checked by the image tests", record=Path(name).stem) for name in
             ("gray16.png", "cmyk.jpg", "palette_trns.png", "exif_rot.jpg")]
    cases += [Case("prompts_empty_file", "an empty prompts file", "empty_prompts", "error", (r"prompts\.jsonl",),
                   note="unsure: a loud exit-0 warning could also satisfy 'never silent'"),
              Case("prompts_directory", "a directory instead of a file", "prompts_dir", "error", (r"imgs",)),
              Case("prompts_hf_datasets_parquet", "parquet from datasets with an Image() column", "hf_parquet", "ok", ())]
    return groups, cases


def _yaml_feedback(name: str, yaml_text: str, *extra: str) -> Group:
    return Group(name, FEEDBACK + ("--config", "cfg.yaml") + extra, _with(_good_prompts, {"cfg.yaml": yaml_text.encode()}))


def _config_cases() -> tuple[list[Group], list[Case]]:
    """Config files and flags a user gets wrong: one clear line before the first record, even with skip."""
    small = "sample: {n: 2, max_new_tokens: 6, %s}\n"
    good_pairs = _train_files([_line(p) for p in GOOD_PAIRS])
    groups = [_yaml_feedback("cfg_n_four", "sample: {n: four, max_new_tokens: 6}\n"),
              _yaml_feedback("cfg_invalid_yaml", "sample: {n: 2, max_new_tokens: 6\nconquer: [\n"),
              _yaml_feedback("cfg_section_scalar", "sample: 5\n"),
              _yaml_feedback("cfg_unknown_key", small % "tempreature: 0.5"),
              _yaml_feedback("cfg_temperature_hot", small % "temperature: hot", *SKIP),
              _yaml_feedback("cfg_max_new_tokens_zero", "sample: {n: 2, max_new_tokens: 0}\n", *SKIP),
              Group("cfg_lr_sci", TRAIN + ("--config", "train.yaml"), _train_files([_line(p) for p in GOOD_PAIRS], "lr: 1e-4\nepochs: 1\n"),
                    cost=3),
              Group("cfg_epochs_str", TRAIN + ("--config", "train.yaml"), _train_files([_line(p) for p in GOOD_PAIRS], 'epochs: "1"\n')),
              Group("flag_conquer_mode_bogus", FEEDBACK + FB_SMALL + ("--conquer-mode", "bogus"), _good_prompts),
              Group("flag_n_zero", sample_argv("0"), _good_prompts),
              Group("flag_batch_size_zero", TRAIN + ("--epochs", "1", "--batch-size", "0"), good_pairs, cost=2),
              Group("flag_on_error_ignore_feedback", FEEDBACK + FB_SMALL + ("--on-error", "ignore"), _good_prompts),
              Group("flag_on_error_ignore_sample", sample_argv("2", "--on-error", "ignore"), _good_prompts),
              Group("flag_max_new_tokens_zero", FEEDBACK + ("--n", "2", "--max-new-tokens", "0") + SKIP, _good_prompts)]
    cases = [Case("config_n_four", 'n: "four"', "cfg_n_four", "error", (r"sample\.n\b", r"\bn\b")),
             Case("config_invalid_yaml", "invalid YAML syntax", "cfg_invalid_yaml", "error", (r"cfg\.yaml",)),
             Case("config_section_scalar", "a section as a scalar (sample: 5)", "cfg_section_scalar", "error", (r"\bsample\b",)),
             Case("config_unknown_key", "unknown key", "cfg_unknown_key", "error", (r"tempreature",)),
             Case("config_temperature_hot", "temperature: hot (with skip)", "cfg_temperature_hot", "error", (r"temperature",)),
             Case("config_max_new_tokens_zero", "max_new_tokens: 0 (with skip)", "cfg_max_new_tokens_zero", "error", (r"max.new.tokens",)),
             Case("config_lr_scientific", "lr: 1e-4 (accepted as 0.0001)", "cfg_lr_sci", "ok", (),
                  (("dpo/manifest.json", "config.lr", 0.0001), ("dpo/train.json", "pairs", 3))),
             Case("config_epochs_string", 'epochs: "1"', "cfg_epochs_str", "error", (r"epochs",),
                  note="unsure: coercing the quoted '1' would also be defensible; the issue lists it as a user error"),
             Case("flag_conquer_mode_bogus", "--conquer-mode bogus", "flag_conquer_mode_bogus", "error", (r"mode",)),
             Case("flag_n_zero", "--n 0", "flag_n_zero", "error", (r"\bn\b",)),
             Case("flag_batch_size_zero", "--batch-size 0", "flag_batch_size_zero", "error", (r"batch.size",)),
             Case("flag_on_error_ignore_feedback", "--on-error ignore (feedback)", "flag_on_error_ignore_feedback", "error", (r"on.error",)),
             Case("flag_on_error_ignore_sample", "--on-error ignore (sample)", "flag_on_error_ignore_sample", "error", (r"on.error",)),
             Case("flag_max_new_tokens_zero", "--max-new-tokens 0 (with skip)", "flag_max_new_tokens_zero", "error", (r"max.new.tokens",))]
    return groups, cases


def _other_cases() -> tuple[list[Group], list[Case]]:
    """Models, training pairs, export / import, and skip through feedback and best-of-n."""
    bad_img = {"prompt_id": "noimg", "question": "Describe the image.", "image": "nope.png"}
    corrupt = BAD_RECORDS[1]
    train_lines = [_line(GOOD_PAIRS[0]), _line(BAD_PAIR_MISSING), _line(GOOD_PAIRS[1]), _line(BAD_PAIR_SAME), _line(GOOD_PAIRS[2]),
                   _truncated(GOOD_PAIRS[0])]
    trained = (("dpo/train.json", "pairs", len(GOOD_PAIRS)),)  # every good pair trained on
    same_id = rf"{re.escape(BAD_PAIR_SAME['chosen_id'])}>{re.escape(BAD_PAIR_SAME['rejected_id'])}"
    groups = [Group("model_no_config", sample_argv(model="m"), lambda m: {**_good_prompts(m), **_model_copy(m, drop="config.json")}),
              Group("model_truncated", sample_argv(model="m"), lambda m: {**_good_prompts(m), **_model_copy(m, truncate="model.safetensors")}),
              Group("train_skip", TRAIN + ("--epochs", "1") + SKIP, _train_files(train_lines), cost=3),
              Group("train_missing_field", TRAIN + ("--epochs", "1"), _train_files(train_lines[:3])),
              Group("train_truncated", TRAIN + ("--epochs", "1"), _train_files([train_lines[0], train_lines[2], train_lines[5]])),
              Group("train_same", TRAIN + ("--epochs", "1"), _train_files(train_lines[:1] + train_lines[3:5]), cost=2),
              Group("export_non_image", ("export", "--run", "run", "--format", "trl", "--out", "trl"), _export_files),
              Group("import_non_parquet", ("import-rlaifv", "--parquet", "notes.parquet", "--out", "imp"),
                    lambda m: {"notes.parquet": b"these are my notes, not a parquet file\n"}),
              Group("import_bomb", ("import-rlaifv", "--parquet", "bomb.parquet", "--out", "imp"), _rlaifv_parquet),
              Group("feedback_skip", FEEDBACK + FB_SMALL + SKIP, _prompts_with([_line(bad_img)]), "run/candidates", GOOD_IDS, 4),
              Group("bon_skip", BON + SKIP, _prompts_with([_line(corrupt[2])], corrupt[3]), "bon/results", GOOD_IDS, 3)]
    cases = [Case("model_without_config_json", "a model folder without config.json", "model_no_config", "error",
                  (r"config\.json", r"(^|[\s'\"/])m\b")),
             Case("model_truncated_safetensors", "a truncated model.safetensors", "model_truncated", "error", (r"model\.safetensors",)),
             Case("train_missing_field_skip", "pair with a missing field", "train_skip", "reject", _line_names(2, None, "pairs.jsonl"),
                  trained),
             Case("train_chosen_eq_rejected_skip", "chosen == rejected pair", "train_skip", "reject",
                  _line_names(4, None, "pairs.jsonl") + (same_id,), trained, note="unsure: the fix may warn instead of rejecting"),
             Case("train_truncated_last_line_skip", "truncated last line", "train_skip", "reject", _line_names(6, None, "pairs.jsonl"),
                  trained),
             Case("train_missing_field_raise", "pair with a missing field", "train_missing_field", "error", _line_names(2, None, "pairs.jsonl")),
             Case("train_truncated_last_line_raise", "truncated last line", "train_truncated", "error", _line_names(3, None, "pairs.jsonl")),
             Case("train_chosen_eq_rejected_raise", "chosen == rejected pair", "train_same", "error",
                  _line_names(2, None, "pairs.jsonl") + (same_id,), note="unsure: the fix may warn instead of stopping"),
             Case("export_prompt_path_not_an_image", "export of a prompt whose path names a text file outside the run",
                  "export_non_image", "error", (r"\bleak\b", r"secret\.txt")),
             Case("import_non_parquet", "a non-parquet file given to import-rlaifv", "import_non_parquet", "error", (r"notes\.parquet",)),
             Case("import_bomb_image", "import-rlaifv of a 12000x12000 image", "import_bomb", "error",
                  (r"bomb\.parquet", r"\brow 0\b", r"bomb/0")),
             Case("feedback_skip_missing_image", "missing image (feedback, skip)", "feedback_skip", "reject", _line_names(2, "noimg")),
             Case("best_of_n_skip_corrupt_image", "corrupt image (best-of-n, skip)", "bon_skip", "reject", _line_names(2, "corrupt"))]
    return groups, cases


def corpus() -> tuple[dict[str, Group], list[Case]]:
    """Every group (by name) and every case."""
    groups: list[Group] = []
    cases: list[Case] = []
    for make in (_prompt_cases, _file_cases, _config_cases, _other_cases):
        g, c = make()
        groups += g
        cases += c
    by_name = {g.name: g for g in groups}
    assert len(by_name) == len(groups) and len({c.name for c in cases}) == len(cases), "duplicate names"
    assert all(c.group in by_name and c.expected in EXPECTED for c in cases)
    return by_name, cases


GROUPS, CASES = corpus()


def argv_of(group: Group, model: Path | str) -> list[str]:
    return [a.replace("{model}", str(model)) for a in group.argv]


def write_group(group: Group, folder: Path, model: Path) -> Path:
    """Write a group's input files into ``folder/<group>/`` (emptied first); returns that folder."""
    import shutil

    where = Path(folder) / group.name
    shutil.rmtree(where, ignore_errors=True)
    for rel, data in group.files(Path(model)).items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_bytes(data)
    where.mkdir(parents=True, exist_ok=True)
    return where


def write_corpus(folder: Path, model: Path) -> list[dict]:
    """Every group's files under ``folder``, and ``folder/corpus.json``: one entry per case."""
    entries = []
    for group in GROUPS.values():
        where = write_group(group, folder, model)
        files = sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.is_file())
        entries += [{"name": c.name, "kind": c.kind, "group": c.group, "files": files, "argv": argv_of(group, model),
                     "expected": c.expected, "names": list(c.names), "note": c.note} for c in CASES if c.group == group.name]
    (Path(folder) / "corpus.json").write_text(json.dumps(entries, indent=1))
    return entries
