"""The CPU-checkable parts of the GPU smoke script (``bench/gpu_smoke.sh``; the run itself needs CUDA).

The dry run's commands are the ones the real run executes: every ``--flag`` must be an option of
its ``rlaifv`` command (checked against ``rlaifv <cmd> --help`` as a user would read it), every
config file it writes must load into its config class, the model must be about 0.5 B
parameters (counted on the meta device), and without CUDA the script exits with one line,
running nothing.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_smoke.sh"
ENV = {**os.environ, "COLUMNS": "300", "PYTHON": sys.executable, "TERM": "dumb"}


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def _dry_run(tmp_path: Path) -> list[list[str]]:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--work", str(tmp_path / "w")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "w").exists()  # a dry run writes nothing
    return [shlex.split(line.split("] $ ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("[")]


def _has(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def test_every_flag_of_the_dry_run_exists(tmp_path, rlaifv_bin):
    commands = _dry_run(tmp_path)
    stages = {c[1] if "rlaifv" in Path(c[0]).name else "probe" for c in commands}
    assert {"sample", "divide", "ask", "conquer", "pairs", "train", "best-of-n", "probe"} <= stages
    backends = [c[c.index("--backend") + 1] for c in commands if "--backend" in c]
    assert backends.count("hf") >= 3 and backends.count("vllm") >= 3  # sample, conquer, probe on each backend
    helps: dict[str, str] = {}
    for argv in commands:
        if "rlaifv" in Path(argv[0]).name:
            key, cmd = argv[1], rlaifv_bin + [argv[1], "--help"]
        else:  # the probe: python bench/gpu_smoke_model.py probe ...
            key, cmd = "probe", [sys.executable, argv[1], "probe", "--help"]
        if key not in helps:
            proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            helps[key] = proc.stdout
        missing = [a for a in argv if a.startswith("--") and not _has(a, helps[key])]
        assert not missing, f"`{key}` has no {missing} (command: {shlex.join(argv)})"
    train = next(c for c in commands if len(c) > 1 and c[1] == "train")
    assert {"--gradient-checkpointing", "--finetune", "--max-steps"} <= set(train) and train[train.index("--dtype") + 1] == "bfloat16"
    assert train[train.index("--mixed-precision") + 1] == "bf16" and train[train.index("--finetune") + 1] == "lora"


def test_config_files_load_into_their_classes(tmp_path):
    import yaml

    from rlaifv.config import load_config

    smoke = _bench_module("gpu_smoke")
    args = smoke.parse(["--work", str(tmp_path)])
    files = smoke.config_files(tmp_path, args)
    assert {"vllm/sample.yaml", "vllm/conquer.yaml", "vllm/bestofn.yaml", "train.yaml"} <= set(files)
    for name, (cls_path, data) in files.items():
        module, cls = cls_path.split(":")
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        klass = getattr(importlib.import_module(module), cls)
        cfg = load_config(klass, path, {"model": "m"} if "model" in klass.__dataclass_fields__ else {})
        if "vllm" in data:
            assert cfg.vllm.gpu_memory_utilization == args.gpu_share


def test_model_is_about_half_a_billion_parameters_at_llava_proportions():
    model = _bench_module("gpu_smoke_model")
    cfg = model.llava_config(model.tokenizer())
    assert 0.45e9 <= model.parameter_count(cfg) <= 0.55e9
    v = cfg.vision_config
    assert (v.image_size // v.patch_size) ** 2 == 576  # LLaVA-1.5's image tokens


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA machine would run the whole smoke test")
def test_without_cuda_one_line_and_nothing_run(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "w")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_compare_checks_greedy_yes_no_and_logprobs(tmp_path):
    import json

    smoke = _bench_module("gpu_smoke")
    hf = {"greedy": {"a": "a red circle", "b": "a square"}, "yes_no": {"a": [[0.6, 0.3, []], [0.01, 0.02, []]]},
          "logprobs": {"a": [[-1.0, -2.0, -0.5]]}, "counts": {}}

    def run(vllm: dict) -> list[bool]:
        for name, data in (("hf", hf), ("vllm", vllm)):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "probe.json").write_text(json.dumps(data))
        return [passed for _, _, passed in smoke.compare(tmp_path, "float32")]

    same = json.loads(json.dumps(hf))
    assert run(same) == [True, True, True, True]
    close = json.loads(json.dumps(hf))
    close["yes_no"]["a"][0][:2] = [0.6015, 0.2990]  # within 2e-3
    close["logprobs"]["a"][0][1] = -2.009  # within 1e-2
    assert run(close) == [True, True, True, True]
    # vLLM's "yes" outside its top-k: its 0.0 is a lower bound the hf 0.01 respects; a 0.05 "bound" would not
    bounded = json.loads(json.dumps(hf))
    bounded["yes_no"]["a"][1] = [0.0, 0.02, ["yes"]]
    assert run(bounded)[1] is True
    bounded["yes_no"]["a"][1] = [0.05, 0.02, ["yes"]]
    assert run(bounded)[1] is False
    off = json.loads(json.dumps(hf))
    off["greedy"]["b"] = "a circle"
    off["yes_no"]["a"][0][0] = 0.61
    off["logprobs"]["a"][0] = off["logprobs"]["a"][0][:2]  # a different token count is a mismatch, not a diff
    assert run(off) == [False, False, False, True]
