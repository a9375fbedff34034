"""Resume integrity (issue 11, points 5, 8, 9, 10): changed inputs are noticed, an empty stage
holds 0 records, rejects can be retried and are counted, paths compare by what they name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from rlaifv.records import Candidate, PreferencePair, Prompt
from rlaifv.resume import prompt_fingerprint
from rlaifv.runner import run_stage
from rlaifv.store import RecordStore, StoreError, read_records, write_manifest


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _prompts(folder: Path, questions: dict[str, str]) -> tuple[list[Prompt], Path]:
    """A prompts file with one 8x8 image per prompt (images/ID.png, red unless already there)."""
    for pid in questions:
        if not (folder / "images" / f"{pid}.png").exists():
            _image(folder / "images" / f"{pid}.png", (200, 0, 0))
    rows = [{"prompt_id": pid, "question": q, "image": f"images/{pid}.png"} for pid, q in questions.items()]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return list(read_records(path, Prompt)), path


class _Echo:
    """A stand-in sampler: one candidate per prompt whose text shows the question and image bytes."""

    def __init__(self, base: Path) -> None:
        self.base, self.calls = base, []

    def __call__(self, batch: list[Prompt]) -> list[Candidate]:
        self.calls += [p.prompt_id for p in batch]
        out = []
        for p in batch:
            if not (self.base / p.image).exists():
                raise ValueError(f"prompt {p.prompt_id!r}: image file not found")
            colour = Image.open(self.base / p.image).getpixel((0, 0))
            out.append(Candidate(p.prompt_id, 0, 0, f"{p.question} | {colour}"))
        return out


def _sample(out: Path, prompts: list[Prompt], base: Path, proc: _Echo, **kw):
    return run_stage("sample", out, Candidate, prompts, lambda p: p.prompt_id, proc, config={"n": 1},
                     show_progress=False, fingerprint=lambda p: prompt_fingerprint(p, base),
                     record_key=lambda c: c.prompt_id, **kw)


def _texts(out: Path) -> dict[str, str]:
    return {c.prompt_id: c.text for c in read_records(out, Candidate)}


# ----------------------------------------------------------------------------- point 5


def test_changed_question_or_image_is_refused_naming_it_then_redone(tmp_path):
    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?", "b": "Q b?", "c": "Q c?"})
    proc = _Echo(path.parent)
    _sample(tmp_path / "c", prompts, path.parent, proc)
    assert _texts(tmp_path / "c")["b"] == "Q b? | (200, 0, 0)"
    _sample(tmp_path / "c", prompts, path.parent, proc)  # unchanged rerun: nothing redone
    assert proc.calls == ["a", "b", "c"]

    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?", "b": "Q b edited?", "c": "Q c?"})
    _image(tmp_path / "in" / "images" / "c.png", (0, 0, 200))  # same path, new image
    with pytest.raises(StoreError) as err:
        _sample(tmp_path / "c", prompts, path.parent, proc)
    msg = str(err.value)
    assert "\n" not in msg and "2 input(s) changed" in msg and "'b', 'c'" in msg and "--redo-changed" in msg
    assert proc.calls == ["a", "b", "c"]  # refused before any work

    res = _sample(tmp_path / "c", prompts, path.parent, proc, redo_changed=True)
    assert res.redone == ["b", "c"] and proc.calls[3:] == ["b", "c"]
    assert _texts(tmp_path / "c") == {"a": "Q a? | (200, 0, 0)", "b": "Q b edited? | (200, 0, 0)", "c": "Q c? | (0, 0, 200)"}
    _sample(tmp_path / "c", prompts, path.parent, proc)  # the redone inputs' new fingerprints are stored
    assert proc.calls[5:] == []


def test_downstream_stage_notices_a_changed_upstream_record(tmp_path):
    """divide/ask/conquer key their inputs by upstream records: a redone candidate is a changed input."""
    cands = [Candidate("a", 0, 0, "There is a dog."), Candidate("b", 0, 0, "There is a cat.")]

    def split(batch):
        return [Candidate(c.prompt_id, 0, 0, c.text.upper()) for c in batch]

    kw = dict(config={}, show_progress=False, record_key=lambda c: c.id)
    run_stage("divide", tmp_path / "d", Candidate, cands, lambda c: c.id, split, **kw)
    cands[1] = Candidate("b", 0, 0, "There is a bird.")
    with pytest.raises(StoreError, match=r"divide: 1 input\(s\) changed .*'b#0'"):
        run_stage("divide", tmp_path / "d", Candidate, cands, lambda c: c.id, split, **kw)
    run_stage("divide", tmp_path / "d", Candidate, cands, lambda c: c.id, split, redo_changed=True, **kw)
    assert [c.text for c in read_records(tmp_path / "d", Candidate)] == ["THERE IS A DOG.", "THERE IS A BIRD."]


def test_redo_killed_mid_swap_is_finished_on_the_next_run(tmp_path, monkeypatch):
    import rlaifv.resume as resume

    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?", "b": "Q b?"})
    proc = _Echo(path.parent)
    _sample(tmp_path / "c", prompts, path.parent, proc)
    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?", "b": "Q b2?"})
    real = os.replace

    def killed_after_first_rename(src, dst):
        if Path(dst) == tmp_path / "c":  # out -> out.redo-old done, out.redo -> out not yet: "kill"
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(resume.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        _sample(tmp_path / "c", prompts, path.parent, proc, redo_changed=True)
    monkeypatch.setattr(resume.os, "replace", real)
    assert not (tmp_path / "c").exists() and (tmp_path / "c.redo").exists()
    _sample(tmp_path / "c", prompts, path.parent, proc)  # recovers the swap; b's old output and progress are gone
    assert _texts(tmp_path / "c") == {"a": "Q a? | (200, 0, 0)", "b": "Q b2? | (200, 0, 0)"}
    assert not (tmp_path / "c.redo").exists() and not (tmp_path / "c.redo-old").exists()


# ----------------------------------------------------------------------------- point 8


def test_empty_stage_folder_holds_zero_records(tmp_path):
    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?"})
    (tmp_path / "in" / "images" / "a.png").unlink()
    res = _sample(tmp_path / "c", prompts, path.parent, _Echo(path.parent), on_error="skip")
    assert res.n_rejected == 1 and (tmp_path / "c" / "rejects.jsonl").exists()
    assert list(read_records(tmp_path / "c", Candidate)) == []  # not its rejects.jsonl / progress.jsonl as records
    with RecordStore(tmp_path / "pairs", PreferencePair):  # a store that wrote nothing (e.g. 0 pairs)
        pass
    assert list(read_records(tmp_path / "pairs", PreferencePair)) == []


# ----------------------------------------------------------------------------- point 9


def test_rejects_are_counted_on_rerun_and_retried_on_request(tmp_path):
    prompts, path = _prompts(tmp_path / "in", {"a": "Q a?", "b": "Q b?"})
    (tmp_path / "in" / "images" / "b.png").unlink()
    proc = _Echo(path.parent)
    first = _sample(tmp_path / "c", prompts, path.parent, proc, on_error="skip")
    assert first.rejected == ["b"] and first.n_rejects_carried == 0
    n_calls = len(proc.calls)
    _image(tmp_path / "in" / "images" / "b.png", (0, 200, 0))  # the input is fixed
    again = _sample(tmp_path / "c", prompts, path.parent, proc)
    assert again.n_rejects_carried == 1 and proc.calls[n_calls:] == [] and "b" not in _texts(tmp_path / "c")
    retry = _sample(tmp_path / "c", prompts, path.parent, proc, retry_rejects=True)
    assert retry.n_rejects_carried == 0 and retry.n_processed == 1 and proc.calls[n_calls:] == ["b"]
    assert _texts(tmp_path / "c")["b"] == "Q b? | (0, 200, 0)"
    assert (tmp_path / "c" / "rejects.jsonl").read_text() == ""
    kept = list((tmp_path / "c").glob("rejects.retried-*.jsonl"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["id"] == "b"  # moved aside, not deleted


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="250")


def test_cli_sample_reports_carried_rejects_and_retries_them(tmp_path, tiny_sandbox_model, rlaifv_bin):
    _, path = _prompts(tmp_path / "in", {"a": "Describe the image.", "b": "Describe the image."})
    (tmp_path / "in" / "images" / "b.png").unlink()
    cmd = rlaifv_bin + ["sample", "--prompts", str(path), "--model", str(tiny_sandbox_model), "--out", str(tmp_path / "c"),
                        "--n", "2", "--max-new-tokens", "4"]
    run = lambda *extra: subprocess.run(cmd + list(extra), env=_env(), capture_output=True, text=True, timeout=300)  # noqa: E731
    assert run("--on-error", "skip").returncode == 0
    _image(tmp_path / "in" / "images" / "b.png", (0, 200, 0))
    again = run()
    assert again.returncode == 0 and "rejects carried over from an earlier run: 1 (sample 1)" in again.stdout
    retry = run("--retry-rejects")
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "carried over" not in retry.stdout
    assert sorted({c.prompt_id for c in read_records(tmp_path / "c", Candidate)}) == ["a", "b"]


def test_cli_feedback_refuses_an_edited_question_then_redoes_it(tmp_path, tiny_sandbox_model, rlaifv_bin):
    """The pairs must never join old answers to a new question."""
    _, path = _prompts(tmp_path / "in", {"a": "Describe the image.", "b": "Describe the image."})
    cmd = rlaifv_bin + ["feedback", "--prompts", str(path), "--policy", str(tiny_sandbox_model), "--labeler",
                        str(tiny_sandbox_model), "--n", "2", "--max-new-tokens", "6", "--out", str(tmp_path / "run")]
    run = lambda *extra: subprocess.run(cmd + list(extra), env=_env(), capture_output=True, text=True, timeout=300)  # noqa: E731
    assert run().returncode == 0
    _prompts(tmp_path / "in", {"a": "Describe the image.", "b": "What is in the picture?"})
    refused = run()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = " ".join(refused.stdout.split())
    assert "sample: 1 input(s) changed" in line and "'b'" in line and "--redo-changed" in line
    redo = run("--redo-changed")
    assert redo.returncode == 0, redo.stdout + redo.stderr
    summary = json.loads((tmp_path / "run" / "feedback.json").read_text())
    assert summary["redone"]["sample"] == ["b"] and summary["redone"]["divide"] == ["b#0", "b#1"]
    assert summary["redone"]["conquer"] == ["b"] and not any(k.startswith("a") for ks in summary["redone"].values() for k in ks)
    pairs = list(read_records(tmp_path / "run" / "pairs", PreferencePair))
    assert {p.question for p in pairs if p.prompt_id == "b"} <= {"What is in the picture?"}


# ----------------------------------------------------------------------------- point 10


def test_manifest_compares_paths_by_what_they_name(tmp_path, monkeypatch):
    root = tmp_path / "w"
    (root / "run" / "fb").mkdir(parents=True)
    (root / "run" / "fb" / "pairs.jsonl").write_text("{}\n")
    monkeypatch.chdir(root)

    def manifest(folder: str, pairs: str, **cfg):
        return write_manifest(folder, "train", {"pairs": pairs, "out": folder, "finetune": "lora", **cfg}, {"seed": 0},
                              [pairs], check_inputs=True)

    manifest("run/train", "run/fb/pairs.jsonl")
    manifest("./run/train", "./run/fb/pairs.jsonl")  # ./x vs x
    manifest(str(root / "run" / "train"), str(root / "run" / "fb" / "pairs.jsonl"))  # absolute vs relative
    monkeypatch.chdir(root / "run")
    manifest("train", "fb/pairs.jsonl")  # another working directory
    monkeypatch.chdir(root)
    shutil.move(root / "run", root / "moved")
    manifest("moved/train", "moved/fb/pairs.jsonl")  # the whole run folder moved
    with pytest.raises(StoreError, match=r"config\.finetune: 'lora' -> 'full'"):
        manifest("moved/train", "moved/fb/pairs.jsonl", finetune="full")
    (root / "moved" / "fb" / "pairs.jsonl").write_text("{}\n{}\n")
    with pytest.raises(StoreError, match=r"pairs\.jsonl: content changed"):
        manifest("moved/train", "moved/fb/pairs.jsonl")


def test_train_resumes_a_moved_run_folder_given_other_spellings(tmp_path, tiny_sandbox_model, monkeypatch):
    from test_train import _pairs_data

    from rlaifv.training.dpo import DPOConfig, train_dpo

    run = tmp_path / "runs" / "x"
    _pairs_data(run)
    monkeypatch.chdir(tmp_path)
    common = dict(model=str(tiny_sandbox_model), finetune="full", lr=1e-3, epochs=1.0, batch_size=2,
                  checkpoints_per_epoch=2, progress=False, warmup_ratio=0.0)
    first = train_dpo(DPOConfig(pairs="runs/x/pairs", prompts="runs/x/prompts/prompts.jsonl", out="runs/x/train", **common),
                      stop_after_step=2)
    assert first["finished"] is False
    shutil.move(tmp_path / "runs" / "x", tmp_path / "moved")
    new = tmp_path / "moved"
    res = train_dpo(DPOConfig(pairs=f"./{new.name}/pairs/", prompts=str(new / "prompts" / "prompts.jsonl"),
                              out=str(new / "train"), **common))
    assert res["resumed_from"] == 2 and res["finished"] is True
