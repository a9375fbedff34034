"""The CLI end to end, as a user calls it: the `rlaifv` console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from conftest import TINY_MODEL


def run(cmd: list[str], cwd, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200", OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_the_commands(rlaifv_bin, tmp_path):
    out = run(rlaifv_bin + ["--help"], tmp_path).stdout
    for cmd in ("sandbox", "eval", "eval-coco", "demo"):
        assert cmd in out


def test_pretrain_then_eval(rlaifv_bin, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": TINY_MODEL, "batch_size": 4, "warmup": 2}))
    ckpt = tmp_path / "labeler"
    run(rlaifv_bin + ["sandbox", "pretrain", "--preset", "labeler", "--out", str(ckpt), "--config", str(cfg),
                      "--steps", "3", "--vision-steps", "2", "--eval-scenes", "3"], tmp_path)
    assert (ckpt / "config.json").exists() and (ckpt / "rlaifv_eval.json").exists()
    assert json.loads((ckpt / "rlaifv_pretrain.json").read_text())["config"]["steps"] == 3  # flag beat preset
    out_json = tmp_path / "eval.json"
    proc = run(rlaifv_bin + ["eval", "--model", str(ckpt), "--n-scenes", "3", "--out", str(out_json)], tmp_path)
    assert "CHAIR_i" in proc.stdout
    res = json.loads(out_json.read_text())[str(ckpt)]
    assert 0.0 <= res["describe"]["sampled"]["chair_i"] <= 1.0
    assert set(res["pope"]) == {"random", "popular", "adversarial"}


def test_missing_model_is_a_clear_error(rlaifv_bin, tmp_path):
    proc = run(rlaifv_bin + ["eval", "--model", str(tmp_path / "nope")], tmp_path, check=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_bad_config_key_is_a_clear_error(rlaifv_bin, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stepz: 3\n")
    proc = run(rlaifv_bin + ["sandbox", "pretrain", "--out", str(tmp_path / "m"), "--config", str(cfg)], tmp_path, check=False)
    assert proc.returncode == 2 and "stepz" in proc.stdout


def test_eval_coco(rlaifv_bin, tmp_path):
    ann = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "car"}],
        "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 2}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    # image 1: dog (ok) + car (hallucinated); image 2: cat (ok). CHAIR_i = 1/3, CHAIR_s = 1/2.
    (tmp_path / "answers.jsonl").write_text(
        json.dumps({"image_id": 1, "text": "A puppy sits next to a red car."}) + "\n" + json.dumps({"image_id": 2, "text": "A cat sleeps."}) + "\n"
    )
    run(rlaifv_bin + ["eval-coco", "--answers", "answers.jsonl", "--annotations", "ann.json", "--out", "coco.json"], tmp_path)
    res = json.loads((tmp_path / "coco.json").read_text())
    assert abs(res["chair_i"] - 1 / 3) < 1e-9 and abs(res["chair_s"] - 0.5) < 1e-9


def test_eval_coco_malformed_line_names_it(rlaifv_bin, tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "categories": [], "annotations": []}))
    (tmp_path / "answers.jsonl").write_text("{not json\n")
    proc = run(rlaifv_bin + ["eval-coco", "--answers", "answers.jsonl", "--annotations", "ann.json"], tmp_path, check=False)
    assert proc.returncode == 2 and "answers.jsonl:1" in proc.stdout


def test_stage_commands_chain_like_feedback(rlaifv_bin, tmp_path, tiny_sandbox_model):
    """sample -> divide -> ask -> conquer -> pairs -> export, one command each, as a user would."""
    from rlaifv.sandbox.prompts import write_sandbox_prompts

    prompts = write_sandbox_prompts(tmp_path / "p", 2)
    m = str(tiny_sandbox_model)
    run(rlaifv_bin + ["sample", "--prompts", str(prompts), "--out", "c", "--model", m, "--n", "3", "--max-new-tokens", "16", "--temperature", "1.0"], tmp_path)
    run(rlaifv_bin + ["divide", "--candidates", "c", "--prompts", str(prompts), "--out", "cl", "--on-error", "skip"], tmp_path)
    run(rlaifv_bin + ["ask", "--claims", "cl", "--out", "q"], tmp_path)
    run(rlaifv_bin + ["conquer", "--questions", "q", "--prompts", str(prompts), "--out", "s", "--model", m], tmp_path)
    run(rlaifv_bin + ["pairs", "--prompts", str(prompts), "--candidates", "c", "--claims", "cl", "--scores", "s", "--out", "pairs"], tmp_path)
    assert (tmp_path / "pairs" / "stats.json").exists()
    assert len((tmp_path / "c" / "shard-00000.jsonl").read_text().splitlines()) == 6
