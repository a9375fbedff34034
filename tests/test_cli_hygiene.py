"""CLI hygiene (issue 12, item 7), through the installed ``rlaifv`` console script as a user calls it.

* a user error is one line and exit 2, the traceback only behind ``rlaifv --debug``;
* every ``--flag`` a message, a docstring or a help text advises is a real option (``--overwrite``
  was advised and existed nowhere; ``export --help`` named a ``--pairs`` it does not have);
* a setting no input can meet under ``--on-error skip`` is one error (exit 2) rejecting nothing,
  not every input rejected and exit 0;
* ``rlaifv --version``; ``--help`` imports neither torch nor transformers (it took 5.6 s);
* a finished stage says "nothing to do: N of N done" without loading its model, a resumed one
  "resuming: N of M done".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer

from rlaifv.records import Claim, PolarQuestion
from rlaifv.runner import StageSetupError, run_stage
from rlaifv.sandbox.prompts import write_sandbox_prompts
from rlaifv.store import read_records

SRC = Path(__file__).resolve().parents[1] / "src" / "rlaifv"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def cli(rlaifv_bin, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(rlaifv_bin + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, one non-empty output line (stdout + stderr) naming each of ``names``, no traceback."""
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert "Traceback" not in out and proc.returncode == 2, (proc.returncode, out[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ------------------------------------------------------------------ errors, --debug, --version, --help


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(rlaifv_bin, tmp_path):
    (tmp_path / "answers.jsonl").write_text('{"image_id": 1, "text": "a dog"}\nnot json\n')
    (tmp_path / "ann.json").write_text('{"images": [], "annotations": [], "categories": []}')
    args = ["eval-coco", "--answers", "answers.jsonl", "--annotations", "ann.json"]
    one_line_error(cli(rlaifv_bin, args, tmp_path), "answers.jsonl:2")
    debug = cli(rlaifv_bin, ["--debug", *args], tmp_path)
    out = debug.stdout + debug.stderr
    assert debug.returncode != 0 and "Traceback" in out and "in eval_coco" in out, out[-1500:]
    assert "UserError" in out and "answers.jsonl:2" in out


def test_version_is_the_installed_package_version(rlaifv_bin, tmp_path):
    proc = cli(rlaifv_bin, ["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"rlaifv {metadata.version('rlaifv')}", proc.stdout + proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["feedback", "--help"], ["--version"]])
def test_help_imports_no_heavy_library(argv, tmp_path):
    """What `rlaifv --help` runs (the console script's ``main``), in a fresh interpreter: torch and
    transformers are imported only by the commands that use them (they made --help take 5.6 s)."""
    code = ("import sys\nsys.argv = ['rlaifv', *sys.argv[1:]]\nfrom rlaifv.cli import main\ntry:\n    main()\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]
    assert "Usage" in proc.stdout or "rlaifv " in proc.stdout


def test_help_lists_the_global_options(rlaifv_bin, tmp_path):
    proc = cli(rlaifv_bin, ["--help"], tmp_path)
    assert proc.returncode == 0 and "--version" in proc.stdout and "--debug" in proc.stdout


# ------------------------------------------------------------------ every advised flag is real


def _commands() -> dict[tuple[str, ...], object]:
    """Every command of the app (click objects, by path), the root and `sandbox` groups included."""
    from rlaifv.cli import app

    out: dict[tuple[str, ...], object] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        out[path] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + (name,))

    walk(typer.main.get_command(app), ())
    return out


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")} | {"--help"}


def test_every_flag_named_in_the_source_is_an_option_of_some_command():
    """Error messages, advice, docstrings, help texts: every ``--flag`` in src/ is a real option
    (``pip install --no-deps`` and the flags of a module's own argparse CLI aside)."""
    real = set().union(*(_options(c) for c in _commands().values()))
    argparse_flags = {m for f in SRC.rglob("*.py") for m in re.findall(r'add_argument\(\s*"(--[a-z][a-z0-9-]*)"', f.read_text())}
    named: dict[str, list[str]] = {}
    for f in sorted(SRC.rglob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if "pip install" in line:
                continue
            for flag in FLAG.findall(line):
                named.setdefault(flag, []).append(f"{f.relative_to(SRC)}:{i}")
    assert "--redo-changed" in named and "--on-error" in named  # the scan sees the advice strings
    unknown = {f: where for f, where in named.items() if f not in real | argparse_flags}
    assert not unknown, unknown
    assert "--overwrite" not in named


def test_each_command_help_names_only_its_own_flags():
    """A command's docstring and option help texts name only options that command has, or name
    the other command whose flag they mean as `NAME` or `rlaifv NAME` (`export --help` named
    `--pairs`, then an option of `train` only)."""
    commands = _commands()
    wrong = {}
    for path, cmd in commands.items():
        for text in [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]:
            others = [c for p, c in commands.items() if p and p != path and re.search(rf"`{re.escape(p[-1])}\b|rlaifv {re.escape(p[-1])}\b", text)]
            bad = set(FLAG.findall(text)) - _options(cmd) - set().union(*(_options(c) for c in others))
            if bad:
                wrong.setdefault(" ".join(path), set()).update(bad)
    assert not wrong, wrong


@pytest.mark.parametrize("command", ["sample", "divide", "ask", "conquer", "feedback", "best-of-n"])
def test_commands_through_the_runner_have_the_flags_its_messages_advise(command):
    """runner.py / resume.py advise --on-error skip, --redo-changed, --retry-rejects to every
    command that runs a stage (best-of-n lacked the last two)."""
    assert {"--on-error", "--redo-changed", "--retry-rejects"} <= _options(_commands()[(command,)])


def test_a_different_run_in_the_folder_advises_a_real_action(tmp_path):
    from rlaifv.store import StoreError, write_manifest

    write_manifest(tmp_path / "o", "sample", {"model": "m1"}, {}, [])
    with pytest.raises(StoreError, match=r"config\.model: 'm1' -> 'm2'.*new output folder, or delete \S*o to start over") as e:
        write_manifest(tmp_path / "o", "sample", {"model": "m2"}, {}, [])
    assert "--" not in str(e.value)


def test_sandbox_audit_on_a_real_run_is_a_one_line_error(rlaifv_bin, tmp_path):
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    (run / "prompts" / "prompts.jsonl").write_text(json.dumps({"prompt_id": "photo-1", "question": "What is here?",
                                                                "image": "photo-1.jpg"}) + "\n")
    one_line_error(cli(rlaifv_bin, ["sandbox", "audit", "--run", "run"], tmp_path), "photo-1", "no sandbox scene")


# ------------------------------------------------------------------ a setting no input meets, under skip


def _echo(fail: set[str]):
    def process(batch: list[str]) -> list[Claim]:
        if any(x in fail for x in batch):
            raise ValueError(f"cannot use {sorted(set(batch) & fail)}")
        return [Claim(f"{x}#0", 0, f"claim {x}") for x in batch]
    return process


def test_skip_rejects_nothing_when_every_input_fails(tmp_path):
    kw = dict(config={}, batch_size=2, on_error="skip", show_progress=False)
    with pytest.raises(StageSetupError, match=r"divide: all 3 inputs failed and none succeeded.*nothing was rejected.*input 'a'"):
        run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c"], lambda x: x, _echo({"a", "b", "c"}), **kw)
    assert not (tmp_path / "s" / "rejects.jsonl").exists() or not (tmp_path / "s" / "rejects.jsonl").read_text().strip()
    # the fixed setting runs in the same folder (no "holds output of a different run": nothing was done)
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c"], lambda x: x, _echo(set()), **{**kw, "config": {"fixed": 1}})
    assert (res.n_written, res.n_rejected) == (3, 0)
    # one input alone: a bad input and a bad setting cannot be told apart, it is rejected as before
    res = run_stage("divide", tmp_path / "one", Claim, ["a"], lambda x: x, _echo({"a"}), **kw)
    assert (res.n_rejected, res.n_written) == (1, 0) and (tmp_path / "one" / "rejects.jsonl").read_text().strip()


def test_skip_stops_after_the_first_failures_in_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr("rlaifv.runner.FAIL_FAST_AFTER", 3)
    seen: list[str] = []

    def process(batch: list[str]) -> list[Claim]:
        seen.extend(batch)
        raise ValueError("no")

    with pytest.raises(StageSetupError, match=r"the first 3 inputs failed"):
        run_stage("divide", tmp_path / "s", Claim, list("abcdefgh"), lambda x: x, process, config={}, batch_size=1,
                  on_error="skip", show_progress=False)
    assert seen == ["a", "b", "c"]


def test_skip_still_rejects_bad_inputs_once_one_succeeds(tmp_path):
    """Held failures are written when a later input succeeds; after a success they go straight in."""
    kw = dict(config={}, batch_size=2, on_error="skip", show_progress=False)
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c", "d"], lambda x: x, _echo({"a", "d"}), **kw)
    assert (res.n_rejected, res.rejected, res.n_written) == (2, ["a", "d"], 2)
    rejects = [json.loads(line)["id"] for line in (tmp_path / "s" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == ["a", "d"]
    # a resumed folder has had successes: a new input that fails is rejected, not held
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c", "d", "e"], lambda x: x, _echo({"e"}), **kw)
    assert (res.n_rejected, res.rejected, res.n_written) == (1, ["e"], 0)


def test_a_setting_no_input_meets_under_skip_is_one_error(tiny_sandbox_model, rlaifv_bin, tmp_path):
    """Reproduces the issue: `max_image_pixels: 1` (no image meets it) with --on-error skip
    rejected every prompt and exited 0; now exit 2, one line, nothing rejected."""
    write_sandbox_prompts(tmp_path / "p", 2)
    (tmp_path / "cfg.yaml").write_text("max_image_pixels: 1\n")
    proc = cli(rlaifv_bin, ["sample", "--prompts", "p/prompts.jsonl", "--out", "c", "--model", str(tiny_sandbox_model),
                            "--n", "2", "--max-new-tokens", "4", "--config", "cfg.yaml", "--on-error", "skip"], tmp_path)
    one_line_error(proc, "all 2 inputs failed", "nothing was rejected", "max_image_pixels")
    assert not (tmp_path / "c" / "rejects.jsonl").exists() or not (tmp_path / "c" / "rejects.jsonl").read_text().strip()


# ------------------------------------------------------------------ reruns: nothing to do / resuming


def _break(model: Path) -> None:
    """Any load of this model folder now fails (its weights are garbage)."""
    from rlaifv.models.load import ModelLoadError, load_vlm

    weights = list(model.glob("*.safetensors"))
    assert weights
    for f in weights:
        f.write_bytes(b"not weights")
    with pytest.raises((ModelLoadError, OSError, ValueError)):
        load_vlm(str(model))


def test_a_finished_stage_builds_no_process_and_a_resumed_one_says_so(tmp_path, capsys):
    """``make_process`` (what loads a stage's models) runs only when some input is left to do."""
    built: list[int] = []

    def make():
        built.append(1)
        return _echo(set())

    kw = dict(config={}, batch_size=2, on_error="skip")
    run_stage("divide", tmp_path / "s", Claim, ["a", "b"], lambda x: x, None, make_process=make, **kw)
    assert len(built) == 1 and "nothing to do" not in capsys.readouterr().out
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b"], lambda x: x, None, make_process=make, **kw)
    assert len(built) == 1 and res.n_skipped_done == 2 and res.n_written == 0
    assert "divide: nothing to do: 2 of 2 done" in capsys.readouterr().out
    res = run_stage("divide", tmp_path / "s", Claim, ["a", "b", "c", "d"], lambda x: x, None, make_process=make, **kw)
    assert len(built) == 2 and res.n_written == 2
    assert "divide: resuming: 2 of 4 done" in capsys.readouterr().out
    run_stage("divide", tmp_path / "t", Claim, [], lambda x: x, None, make_process=make, **kw)  # an empty stage loads nothing either
    assert len(built) == 2


def test_rerun_of_a_finished_feedback_run_loads_no_model(tiny_sandbox_model, rlaifv_bin, tmp_path):
    """`rlaifv feedback` again on a finished run, its model folders broken: every stage says
    "nothing to do" and the run ends well (sample and conquer share run_sample / run_conquer
    with the `rlaifv sample` / `rlaifv conquer` commands). It reloaded both models before."""
    model = tmp_path / "m"
    shutil.copytree(tiny_sandbox_model, model)
    write_sandbox_prompts(tmp_path / "p", 2)
    args = ["feedback", "--prompts", "p/prompts.jsonl", "--out", "run", "--policy", "m", "--labeler", "m",
            "--n", "2", "--max-new-tokens", "6"]
    first = cli(rlaifv_bin, args, tmp_path)
    assert first.returncode == 0, first.stdout[-1500:] + first.stderr[-1500:]
    n_questions = sum(1 for _ in read_records(tmp_path / "run" / "questions", PolarQuestion))
    _break(model)
    again = cli(rlaifv_bin, args, tmp_path)
    assert again.returncode == 0, again.stdout[-1500:] + again.stderr[-1500:]
    assert "sample: nothing to do: 2 of 2 done" in again.stdout
    assert "divide: nothing to do: 4 of 4 done" in again.stdout
    if n_questions:  # the tiny model's answers may hold no claim; then conquer has no input at all
        assert "conquer: nothing to do:" in again.stdout
