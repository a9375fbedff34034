"""No sandbox default in a user's path (issue 12.1): the model flags are required outside a sandbox
run, sandbox-only conquer modes refuse real photos, and iterate on one's own prompts runs nothing
of the sandbox. Every refusal happens before a model is loaded or a record is written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from photos import photo_prompts
from typer.testing import CliRunner

from rlaifv.config import ConfigError
from rlaifv.records import PolarQuestion, RecordError
from rlaifv.store import RecordStore


def _cli(args: list[str]):
    """(exit code, output, exception) of ``rlaifv ARGS`` in this process (what main() would print as one line)."""
    from rlaifv.cli import app

    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output, res.exception


def _refused(args: list[str], kind: type, *needles: str) -> None:
    code, out, exc = _cli(args)
    assert isinstance(exc, kind), (code, out, exc)
    for n in needles:
        assert n in str(exc), str(exc)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return photo_prompts(tmp_path_factory.mktemp("photos"))


def test_feedback_train_and_best_of_n_need_their_models(prompts, tmp_path):
    out = tmp_path / "fb"
    _refused(["feedback", "--prompts", str(prompts), "--out", str(out)], ConfigError, "give --policy", "sample.model")
    assert not (out / "candidates").exists()  # refused before anything ran (it used to sample with sandbox:policy)
    _refused(["feedback", "--prompts", str(prompts), "--out", str(out), "--policy", "p"], ConfigError, "give --labeler", "conquer.model")
    _refused(["train", "--pairs", str(tmp_path / "pairs.jsonl"), "--prompts", str(prompts), "--out", str(tmp_path / "t")],
             ConfigError, "give --model")
    assert not (tmp_path / "t").exists()
    _refused(["best-of-n", "--prompts", str(prompts), "--out", str(tmp_path / "b"), "--scorer", "perplexity"], ConfigError,
             "give --policy")
    _refused(["best-of-n", "--prompts", str(prompts), "--out", str(tmp_path / "b"), "--scorer", "labeler", "--policy", "p"],
             ConfigError, "--labeler")
    _refused(["sample", "--prompts", str(prompts), "--out", str(tmp_path / "s")], ConfigError, "give --model")


def test_iterate_on_own_prompts_needs_models_and_runs_nothing_of_the_sandbox(prompts, tmp_path):
    base = ["iterate", "--prompts", str(prompts), "--out", str(tmp_path / "it")]
    _refused(base, ConfigError, "give --policy")
    _refused(base + ["--policy", "p"], ConfigError, "give --labeler", "'self'")
    # sandbox selection / a sandbox report on real prompts: a one-line error (it used to be a traceback,
    # or 200 synthetic test scenes evaluated with the user's model)
    _refused(base + ["--policy", "p", "--labeler", "l", "--selection", "sandbox"], ConfigError, "needs a sandbox run", "'labeler'")
    cfg = tmp_path / "report.yaml"
    cfg.write_text("report_scenes: 20\n")
    _refused(base + ["--policy", "p", "--labeler", "l", "--config", str(cfg)], ConfigError, "synthetic sandbox scenes")
    _refused(base + ["--policy", "p", "--labeler", "l", "--holdout", "4"], ConfigError, "selection.holdout 4 leaves no prompts")
    assert not list((tmp_path / "it").glob("iter-*")) and not (tmp_path / "it" / "start_metrics.json").exists()


def test_sandbox_only_modes_refuse_real_photos(prompts, tmp_path):
    for mode in ("describe_then_match", "describe_then_answer"):
        out = tmp_path / f"fb-{mode}"
        _refused(["feedback", "--prompts", str(prompts), "--out", str(out), "--policy", "p", "--labeler", "l", "--conquer-mode", mode],
                 ConfigError, f"conquer mode {mode!r} is a sandbox-only stand-in", "4 of 4 prompts", "--conquer-mode direct")
        assert not (out / "candidates").exists()  # refused before sampling
    questions = tmp_path / "questions"
    with RecordStore(questions, PolarQuestion) as store:
        store.write([PolarQuestion("hopper#0/0", "There is a woman.", "Is there a woman? Please answer yes or no.")])
    _refused(["conquer", "--questions", str(questions), "--prompts", str(prompts), "--out", str(tmp_path / "sc"), "--model", "l",
              "--mode", "describe_then_match"], ConfigError, "sandbox-only stand-in")
    _refused(["best-of-n", "--prompts", str(prompts), "--out", str(tmp_path / "b"), "--policy", "p", "--labeler", "l",
              "--scorer", "labeler", "--conquer-mode", "describe_then_match"], ConfigError, "sandbox-only stand-in")
    _refused(["iterate", "--prompts", str(prompts), "--out", str(tmp_path / "it"), "--policy", "p", "--labeler", "l",
              "--config", str(_yaml(tmp_path, "feedback: {conquer: {mode: describe_then_match}}\n"))], ConfigError, "sandbox-only stand-in")


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return path


def test_sandbox_audit_of_a_real_run_is_one_error(prompts, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _refused(["sandbox", "audit", "--run", str(run), "--prompts", str(prompts)], RecordError, "no sandbox scene", "sandbox prompts only")


def test_sandbox_runs_still_default_to_the_shipped_models():
    from rlaifv.stages import bestofn, feedback, iterate

    fb = feedback.with_models(feedback.FeedbackConfig(sandbox_prompts=3))
    assert (fb.sample.model, fb.conquer.model) == ("sandbox:policy", "sandbox:labeler")
    mine = feedback.with_models(feedback.FeedbackConfig(sandbox_prompts=3, sample=feedback.SampleConfig(model="m"),
                                                        conquer=feedback.ConquerConfig(model="self-m")))
    assert (mine.sample.model, mine.conquer.model) == ("m", "self-m")
    with pytest.raises(ConfigError, match="--policy"):  # prompts win over sandbox_prompts: a user's run
        feedback.with_models(feedback.FeedbackConfig(prompts="p.jsonl", sandbox_prompts=3))
    bon = bestofn.with_models(bestofn.BestOfNConfig(sandbox_prompts=2))
    assert (bon.sample.model, bon.conquer.model) == ("sandbox:policy", "sandbox:labeler")
    run = iterate.resolve(iterate.IterateConfig(sandbox_prompts=5))
    assert (run.policy, run.labeler, run.selection.kind, run.report_scenes) == ("sandbox:policy", "sandbox:labeler", "sandbox", 200)
    user = iterate.resolve(iterate.IterateConfig(prompts="p.jsonl", policy="m", labeler="self"))
    assert (user.selection.kind, user.report_scenes) == ("labeler", 0)
    from rlaifv.sandbox.loop import sandbox_preset

    preset = sandbox_preset()
    assert (preset.policy, preset.labeler, preset.selection.kind, preset.report_scenes) == ("sandbox:policy", "sandbox:labeler", "sandbox", 200)


def test_help_texts_name_no_sandbox_default():
    for cmd in ("feedback", "train", "best-of-n", "iterate", "sample"):
        code, out, _ = _cli([cmd, "--help"])
        assert code == 0 and "default sandbox:" not in " ".join(out.split()), cmd


def test_console_script_prints_one_line(rlaifv_bin, prompts, tmp_path):
    res = subprocess.run(rlaifv_bin + ["feedback", "--prompts", str(prompts), "--out", str(tmp_path / "fb")], capture_output=True,
                         text=True, env=dict(os.environ, COLUMNS="200"))
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert [line for line in res.stdout.splitlines() if line.strip()] == [
        "error: feedback: give --policy (or sample.model in the config): the model that samples the answers"]
