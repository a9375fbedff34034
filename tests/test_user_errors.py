"""User errors and bad input lines through the CLI, as a user calls it (issue 11, points 6, 7, 11, 12).

A user error ends with exit code 2 and exactly one line naming the key / file / record, never a
traceback; with ``--on-error skip`` a malformed input line goes to the stage's rejects.jsonl
(with file:line) while the good records are processed, and the run says how many it rejected.
Settings are checked before the first record, so a bad one is never reported as a bad record.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from rlaifv.config import ConfigError, load_config
from rlaifv.records import Candidate, PreferencePair, Prompt
from rlaifv.sandbox.prompts import write_sandbox_prompts
from rlaifv.store import read_records

TINY = ("--n", "2", "--max-new-tokens", "4")


def cli(rlaifv_bin, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console script in ``cwd``; the terminal width is left at its default (80): one line
    means one line however long the message is."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(rlaifv_bin + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, exactly one non-empty output line (stdout + stderr), naming every one of ``names``."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert len(lines) == 1, lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """Two good sandbox prompts in tmp_path/p/prompts.jsonl (images next to it)."""
    return write_sandbox_prompts(tmp_path / "p", 2)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _jl(d) -> bytes:
    return (json.dumps(d) + "\n").encode()


# ---------------------------------------------------------------------------------------- point 6


def _bad_prompt_lines(good: Prompt) -> dict[str, bytes]:
    """Reason -> one malformed prompts line (line numbers follow the good lines)."""
    img = good.image
    return {"bad JSON": b'{"prompt_id": "broken", "question": \n',
            "JSON array": b'["x", "Describe.", "a.png"]\n',
            "missing id": _jl({"question": "Describe.", "image": img}),
            "non-string id": _jl({"prompt_id": 7, "question": "Describe.", "image": img}),
            "duplicate id": _jl({"prompt_id": good.prompt_id, "question": "Again?", "image": img}),
            "empty question": _jl({"prompt_id": "emptyq", "question": "  ", "image": img}),
            "non-UTF-8": b'{"prompt_id": "latin1", "question": "Caf\xe9?", "image": "' + img.encode() + b'"}\n',
            "bad base64": _jl({"prompt_id": "b64", "question": "Describe.", "image_bytes": "no%base64!"}),
            "image 123": _jl({"prompt_id": "imgint", "question": "Describe.", "image": 123})}


def test_skip_rejects_each_malformed_prompt_line_and_samples_the_good_ones(rlaifv_bin, tiny_sandbox_model, prompts, tmp_path):
    good = list(read_records(prompts, Prompt))
    bad = _bad_prompt_lines(good[0])
    path = prompts.parent / "mixed.jsonl"
    path.write_bytes(b"".join(_lines(prompts)) + b"".join(bad.values()))
    proc = cli(rlaifv_bin, ["sample", "--prompts", str(path), "--out", "c", "--model", str(tiny_sandbox_model), *TINY,
                            "--on-error", "skip"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    done = {c.prompt_id for c in read_records(tmp_path / "c", Candidate)}
    assert done == {p.prompt_id for p in good}
    entries = [json.loads(x) for x in (tmp_path / "c" / "rejects.jsonl").read_text().splitlines()]
    assert [e["source"] for e in entries] == [f"{path}:{3 + i}" for i in range(len(bad))]  # file:line of each bad line
    assert all(e["reason"] and e["stage"] == "sample" for e in entries)
    assert f"{len(bad)} rejected (see c/rejects.jsonl)" in proc.stdout


@pytest.mark.parametrize("reason", ["bad JSON", "duplicate id", "non-UTF-8", "image 123"])
def test_raise_names_the_malformed_line(rlaifv_bin, prompts, tmp_path, reason):
    good = list(read_records(prompts, Prompt))
    path = prompts.parent / "mixed.jsonl"
    path.write_bytes(b"".join(_lines(prompts)) + _bad_prompt_lines(good[0])[reason])
    proc = cli(rlaifv_bin, ["sample", "--prompts", str(path), "--out", "c", "--model", "sandbox:policy", *TINY], tmp_path)
    assert_user_error(proc, f"{path}:3")


def _pairs_file(prompts: Path, lines: list[bytes]) -> Path:
    path = prompts.parent / "pairs.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def _pair(p: Prompt, chosen: str, rejected: str, k: int) -> dict:
    return PreferencePair(p.prompt_id, p.question, p.image, chosen, rejected, f"{p.prompt_id}#{2 * k}",
                          f"{p.prompt_id}#{2 * k + 1}", 0.0, -1.0).to_dict()


def test_train_skip_rejects_bad_pair_lines_identical_pairs_and_a_truncated_last_line(rlaifv_bin, tiny_sandbox_model, prompts, tmp_path):
    p0, p1 = read_records(prompts, Prompt)
    good = [_pair(p0, "There is a red circle.", "There is a blue star.", 0), _pair(p1, "A ring.", "A large green ring at the top.", 0),
            _pair(p0, "A small star.", "A star and a cross.", 1)]
    missing = {k: v for k, v in _pair(p1, "x", "y", 1).items() if k != "chosen"}
    same = _pair(p1, "There is a ring.", "There is a ring.", 2)
    truncated = _jl(_pair(p1, "A circle.", "A square.", 3))[:40]  # a last line cut short, no newline
    pairs = _pairs_file(prompts, [_jl(good[0]), _jl(missing), _jl(good[1]), _jl(same), _jl(good[2]), truncated])
    args = ["train", "--pairs", str(pairs), "--prompts", str(prompts), "--model", str(tiny_sandbox_model), "--out", "dpo",
            "--epochs", "1", "--batch-size", "2", "--finetune", "full"]
    proc = cli(rlaifv_bin, args + ["--on-error", "skip"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "dpo" / "train.json").read_text())
    assert summary["pairs"] == 3 and summary["rejected"] == 3
    entries = [json.loads(x) for x in (tmp_path / "dpo" / "rejects.jsonl").read_text().splitlines()]
    assert [e["source"] for e in entries[:2]] == [f"{pairs}:2", f"{pairs}:6"]  # missing field, truncated last line
    assert entries[2]["id"] == f"{p1.prompt_id}#4>{p1.prompt_id}#5" and "identical" in entries[2]["reason"]
    assert "3 rejected (see dpo/rejects.jsonl)" in proc.stdout
    # raise mode: the identical pair alone stops the run with one line naming it
    only_same = _pairs_file(prompts, [_jl(good[0]), _jl(same)])
    proc = cli(rlaifv_bin, [*args[:2], str(only_same), *args[3:8], "dpo2", *args[9:]], tmp_path)
    assert_user_error(proc, f"{p1.prompt_id}#4>{p1.prompt_id}#5", "identical")


def test_an_empty_prompts_file_is_an_error_not_a_table_of_zeros(rlaifv_bin, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    for cmd in (["sample", "--out", "c", "--model", "sandbox:policy", *TINY],
                ["feedback", "--out", "fb", "--policy", "sandbox:policy", "--labeler", "sandbox:labeler", *TINY]):
        assert_user_error(cli(rlaifv_bin, [cmd[0], "--prompts", "empty.jsonl", *cmd[1:]], tmp_path), "no prompts in empty.jsonl")


# --------------------------------------------------------------------------------- points 7 and 11


CONFIG_CASES = {  # name -> (YAML or None, extra CLI args, what the one line must name)
    "temperature hot (skip)": ("sample: {temperature: hot, n: 2, max_new_tokens: 4}\n", ["--on-error", "skip"], "sample.temperature"),
    "max_new_tokens 0 (skip)": (None, ["--n", "2", "--max-new-tokens", "0", "--on-error", "skip"], "max_new_tokens"),
    "n 0": (None, ["--n", "0", "--max-new-tokens", "4"], "sample.n"),
    "n four": ("sample: {n: four}\n", [], "sample.n"),
    "invalid YAML": ("sample: {n: 2\nconquer: [\n", [], "cfg.yaml:"),
    "section as scalar": ("sample: 5\n", [], "'sample'"),
    "conquer mode bogus": (None, [*TINY, "--conquer-mode", "bogus"], "bogus"),
    "on-error ignore": (None, [*TINY, "--on-error", "ignore"], "on_error"),
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_feedback_settings_are_one_line_errors_before_any_record(rlaifv_bin, prompts, tmp_path, name):
    yaml_text, extra, key = CONFIG_CASES[name]
    args = ["feedback", "--prompts", str(prompts), "--out", "fb", "--policy", "sandbox:policy", "--labeler", "sandbox:labeler", *extra]
    if yaml_text is not None:
        (tmp_path / "cfg.yaml").write_text(yaml_text)
        args += ["--config", "cfg.yaml"]
    assert_user_error(cli(rlaifv_bin, args, tmp_path), key)
    assert not (tmp_path / "fb" / "candidates" / "rejects.jsonl").exists()  # no prompt was blamed


@pytest.mark.parametrize("args,key", [(["--on-error", "ignore"], "--on-error"), (["--temperature", "0"], "sample.temperature")])
def test_stage_command_settings_are_checked_at_startup(rlaifv_bin, prompts, tmp_path, args, key):
    proc = cli(rlaifv_bin, ["sample", "--prompts", str(prompts), "--out", "c", "--model", "sandbox:policy", *TINY, *args], tmp_path)
    assert_user_error(proc, key)


@pytest.mark.parametrize("yaml_text,flags,key", [('epochs: "1"\n', [], "epochs"), ("", ["--batch-size", "0"], "batch_size"),
                                                 ("finetune: half\n", [], "finetune")])
def test_train_settings_are_checked_before_the_reference_pass(rlaifv_bin, prompts, tmp_path, yaml_text, flags, key):
    (tmp_path / "t.yaml").write_text(yaml_text or "seed: 0\n")
    p0, _ = read_records(prompts, Prompt)
    pairs = _pairs_file(prompts, [_jl(_pair(p0, "A circle.", "A square.", 0))])
    proc = cli(rlaifv_bin, ["train", "--pairs", str(pairs), "--prompts", str(prompts), "--out", "dpo", "--config", "t.yaml", *flags], tmp_path)
    assert_user_error(proc, key)
    assert not (tmp_path / "dpo" / "ref_cache").exists()


def test_config_types_are_checked_and_scientific_notation_is_a_number(tmp_path):
    from rlaifv.stages.feedback import FeedbackConfig
    from rlaifv.training.dpo import DPOConfig

    (tmp_path / "a.yaml").write_text("lr: 1e-4\nepochs: 2\nwarmup_ratio: 5E-2\nbatch_size: 1e1\n")  # YAML 1.1 reads 1e-4 as a string
    cfg = load_config(DPOConfig, tmp_path / "a.yaml")
    assert (cfg.lr, cfg.epochs, cfg.warmup_ratio, cfg.batch_size) == (0.0001, 2.0, 0.05, 10)
    assert isinstance(cfg.lr, float) and isinstance(cfg.batch_size, int)
    for text, key in [('epochs: "1"\n', "epochs"), ("batch_size: 2.5\n", "batch_size"), ("merge_lora: 1\n", "merge_lora"),
                      ("model: 5\n", "model")]:
        (tmp_path / "b.yaml").write_text(text)
        with pytest.raises(ConfigError, match=rf"b\.yaml\.{key}: expected"):
            load_config(DPOConfig, tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("pairs: {scoring: holistc}\nsample: {confounded_temperatures: [0.5, hot]}\n")
    with pytest.raises(ConfigError, match="pairs.scoring: expected one of"):
        load_config(FeedbackConfig, tmp_path / "c.yaml")


def test_a_truncated_model_file_is_one_line_naming_it(rlaifv_bin, tiny_sandbox_model, prompts, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_sandbox_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    proc = cli(rlaifv_bin, ["sample", "--prompts", str(prompts), "--out", "c", "--model", "m", *TINY], tmp_path)
    assert_user_error(proc, "model.safetensors", "m")


# ------------------------------------------------------------------------------ import-rlaifv


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (PIL reads the size from the header alone)."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _rlaifv_parquet(path: Path, image: bytes) -> Path:
    import datasets

    from rlaifv.formats import RLAIFV_COLUMNS, rlaifv_features

    row = {"ds_name": "mine", "image": {"bytes": image, "path": "a.png"}, "question": "What is there?", "chosen": "A dot.",
           "rejected": "Two cats.", "origin_dataset": "x", "origin_split": "{}", "idx": "0", "image_path": "a.png"}
    datasets.Dataset.from_dict({k: [row[k]] for k in RLAIFV_COLUMNS}, features=rlaifv_features()).to_parquet(str(path))
    return path


def test_import_rlaifv_refuses_a_non_parquet_file_and_a_bomb_image(rlaifv_bin, tmp_path):
    (tmp_path / "notes.parquet").write_text("my notes, not a parquet file\n")
    assert_user_error(cli(rlaifv_bin, ["import-rlaifv", "--parquet", "notes.parquet", "--out", "imp"], tmp_path), "notes.parquet")
    _rlaifv_parquet(tmp_path / "bomb.parquet", _png_header(12000, 12000))
    line = assert_user_error(cli(rlaifv_bin, ["import-rlaifv", "--parquet", "bomb.parquet", "--out", "imp"], tmp_path), "bomb.parquet")
    assert "row 0" in line and "12000x12000" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.parquet", "notes.parquet"]  # no half import left


def test_import_rlaifv_is_atomic_and_a_rerun_has_nothing_to_do(rlaifv_bin, prompts, tmp_path):
    image = (prompts.parent / next(read_records(prompts, Prompt)).image).read_bytes()
    src = _rlaifv_parquet(tmp_path / "src.parquet", image)
    (tmp_path / "imp.importing").mkdir()  # what a killed import leaves: started over
    (tmp_path / "imp.importing" / "junk").write_text("x")
    proc = cli(rlaifv_bin, ["import-rlaifv", "--parquet", str(src), "--out", "imp"], tmp_path)
    assert proc.returncode == 0 and "imported 1 prompts and 1 pairs" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "imp.importing").exists() and not (tmp_path / "imp" / "junk").exists()
    (prompt,) = read_records(tmp_path / "imp" / "prompts.jsonl", Prompt)
    assert not Path(prompt.image).is_absolute() and (tmp_path / "imp" / prompt.image).read_bytes() == image
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "imp").rglob("*")}
    again = cli(rlaifv_bin, ["import-rlaifv", "--parquet", str(src), "--out", "imp"], tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "imp").rglob("*")} == before
    other = _rlaifv_parquet(tmp_path / "other.parquet", _png_header(4, 4))
    assert_user_error(cli(rlaifv_bin, ["import-rlaifv", "--parquet", str(other), "--out", "imp"], tmp_path), "imp", "already holds")


# ------------------------------------------------------------------------------- library level


def test_a_transient_oserror_stops_the_run_and_rejects_nothing(tmp_path):
    from rlaifv.records import Claim
    from rlaifv.runner import run_stage

    calls = {"n": 0}

    def flaky(batch: list[str]) -> list[Claim]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return [Claim(f"{x}#0", 0, f"claim {x}") for x in batch]

    kw = dict(config={}, batch_size=1, on_error="skip", show_progress=False)
    with pytest.raises(OSError, match="No space"):
        run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c"], lambda x: x, flaky, **kw)
    assert not (tmp_path / "s" / "rejects.jsonl").exists() or not (tmp_path / "s" / "rejects.jsonl").read_text()
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c"], lambda x: x, flaky, **kw)  # the rerun does b and c
    assert res.n_rejected == 0 and sorted(c.candidate_id for c in read_records(tmp_path / "s", Claim)) == ["a#0", "b#0", "c#0"]


def test_train_killed_after_its_last_resume_state_finishes_cleanly(tiny_sandbox_model, prompts, tmp_path):
    from rlaifv.training.dpo import DPOConfig, train_dpo

    p0, p1 = read_records(prompts, Prompt)
    pairs = _pairs_file(prompts, [_jl(_pair(p0, "A red circle.", "A blue star.", 0)), _jl(_pair(p1, "A ring.", "A big green ring.", 0))])
    cfg = DPOConfig(model=str(tiny_sandbox_model), pairs=str(pairs), prompts=str(prompts), out=str(tmp_path / "run"), finetune="full",
                    epochs=1.0, batch_size=1, checkpoints_per_epoch=1, progress=False)
    first = train_dpo(cfg)
    assert first["finished"] and first["last"]["step"] == 2
    run = tmp_path / "run"
    # killed between _save_resume's renames: no resume/, the complete new state in resume.tmp/
    os.replace(run / "resume", run / "resume.tmp")
    (run / "train.json").write_text("")  # and train.json cut short
    again = train_dpo(cfg)
    assert again["resumed_from"] == 2 and again["last"] == first["last"]  # resumed at its end, not from step 0
    assert json.loads((run / "train.json").read_text())["last"] == first["last"]
    # killed after the final resume state, before its clean-up and the summary
    shutil.copytree(run / "resume", run / "resume.old")
    (run / "train.json").unlink()
    third = train_dpo(cfg)
    assert third["last"] == first["last"] and third["finished"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("resume")) == ["resume"]


def test_empty_question_and_bad_base64_fail_as_records_not_tracebacks():
    from rlaifv.records import RecordError

    with pytest.raises(RecordError, match="empty question"):
        Prompt.from_dict({"prompt_id": "a", "question": " ", "image": "x.png"})
    with pytest.raises(RecordError, match="base64"):
        Prompt.from_dict({"prompt_id": "a", "question": "q", "image_bytes": "no%base64!"})
    with pytest.raises(RecordError, match="'image' must be a string"):
        Prompt.from_dict({"prompt_id": "a", "question": "q", "image": 123})
    assert Prompt.from_dict({"prompt_id": "a", "question": "q", "image_bytes": base64.b64encode(b"x").decode()}).image_bytes == b"x"
