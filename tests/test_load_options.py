"""Model-loading options (issue 12 item 2): one ``LoadOptions`` block, the same flags on every
command that loads a model, checked before any work, and passed to ``from_pretrained``.

Also the finding "``train --device cuda`` on a CPU build ends in a raw AssertionError
traceback" (torch's ``_lazy_init`` from ``load_vlm``'s ``.to("cuda")`` in the reference pass).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlaifv.config import ConfigError, load_config
from rlaifv.models.options import LoadOptions, parse_max_memory

LOAD_FLAGS = ["--device", "--dtype", "--device-map", "--max-memory", "--attn-implementation", "--load-in-4bit",
              "--load-in-8bit", "--trust-remote-code"]
LABELER_FLAGS = ["--labeler-device", "--labeler-dtype", "--labeler-device-map", "--labeler-max-memory"]
#: every command that loads a model -> whether it loads a policy and a labeler
MODEL_COMMANDS = {"sample": False, "conquer": False, "divide": False, "ask": False, "eval": False, "train": False,
                  "feedback": True, "best-of-n": True, "iterate": True}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    """A 1-layer Idefics3 built from config (random weights, no training) and saved."""
    from conftest import tiny_cfg

    from rlaifv.models.tiny import build_tiny_vlm, save_tiny, train_tokenizer

    cfg = tiny_cfg("idefics3")
    tok = train_tokenizer(["Describe the image. There is a red circle. Is there a dog? Please answer yes or no."] * 4,
                          "idefics3", vocab_size=300)
    model, processor = build_tiny_vlm(cfg, tok, seed=0)
    return save_tiny(model, processor, tmp_path_factory.mktemp("tiny_vlm") / "model", cfg)


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with 4 CUDA GPUs as far as the option checks can tell (nothing is loaded on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _without(monkeypatch, *packages: str) -> None:
    """Make ``importlib.util.find_spec`` report ``packages`` as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else real(name, *a))


def _with(monkeypatch, *packages: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in packages else real(name, *a))


# ----------------------------------------------------------------------------- parsing and checks


def test_max_memory_parsing() -> None:
    assert parse_max_memory("0=20GiB,1=20GiB,cpu=64GiB") == {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory(" 0 = 20GB , cpu=1048576 ,") == {0: "20GB", "cpu": 1048576}
    assert parse_max_memory({0: "10GiB", "cuda:1": "12GiB", "disk": "1TB"}) == {0: "10GiB", 1: "12GiB", "disk": "1TB"}
    for bad, why in [("0:20GiB", "no '='"), ("gpu0=1GiB", "unknown device 'gpu0'"), ("0=lots", "size 'lots'"), ("", "empty")]:
        with pytest.raises(ValueError, match=why):
            parse_max_memory(bad)


@pytest.mark.parametrize("values, message", [
    ({"dtype": "int8"}, "--dtype: unknown dtype 'int8'"),
    ({"device": "gpu"}, "--device 'gpu': not a device"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "--load-in-4bit and --load-in-8bit: give one of them"),
    ({"device": "cuda", "device_map": "auto"}, "--device-map auto with --device cuda: the device map places the model itself"),
    ({"max_memory": "cpu=8GiB"}, "--max-memory cpu=8GiB needs --device-map"),
    ({"device_map": "auto", "max_memory": "cpu=8XB"}, "--max-memory cpu=8XB: size '8XB'"),
    ({"device_map": "everywhere"}, "--device-map 'everywhere': expected one of auto, balanced"),
    ({"attn_implementation": ""}, "--attn-implementation: expected an attention implementation name"),
])
def test_static_checks_name_the_flag(values, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LoadOptions(**values)


def test_machine_checks(monkeypatch, no_gpu) -> None:
    """Hardware and packages this machine lacks: one line saying what to do."""
    with pytest.raises(ConfigError, match=r"--device cuda:1: this torch .* sees no CUDA GPU .* use --device cpu"):
        LoadOptions(device="cuda:1")
    with pytest.raises(ConfigError, match=r"--max-memory 0=20GiB,cpu=64GiB: names GPU 0, but this torch .* sees 0 CUDA GPU"):
        LoadOptions(device_map="auto", max_memory="0=20GiB,cpu=64GiB")
    _without(monkeypatch, "bitsandbytes", "flash_attn")
    with pytest.raises(ConfigError, match="--load-in-8bit: bitsandbytes is not installed; pip install bitsandbytes"):
        LoadOptions(load_in_8bit=True)
    with pytest.raises(ConfigError, match="--attn-implementation flash_attention_2: flash-attn is not installed"):
        LoadOptions(attn_implementation="flash_attention_2")
    # the labeler's flags are named as such
    with pytest.raises(ConfigError, match="--labeler-device cuda: this torch"):
        LoadOptions.build({"device": "cuda"}, "labeler-")


def test_gpu_settings_pass_on_a_gpu_machine(fake_gpus) -> None:
    opts = LoadOptions(device_map="auto", max_memory="0=20GiB,3=20GiB,cpu=64GiB", dtype="bf16")
    assert opts.pretrained_kwargs()["max_memory"] == {0: "20GiB", 3: "20GiB", "cpu": "64GiB"}
    with pytest.raises(ConfigError, match="only 4 CUDA GPU"):
        LoadOptions(device="cuda:4")


def test_from_pretrained_kwargs(monkeypatch) -> None:
    kw = LoadOptions(dtype="bfloat16", device_map="cpu", attn_implementation="eager", trust_remote_code=True).pretrained_kwargs()
    assert kw == {"dtype": torch.bfloat16, "device_map": {"": "cpu"}, "attn_implementation": "eager", "trust_remote_code": True}
    assert LoadOptions().pretrained_kwargs() == {"dtype": torch.float32, "trust_remote_code": False}  # never left unset: no prompt
    assert LoadOptions(dtype="auto").pretrained_kwargs()["dtype"] == "auto"
    _with(monkeypatch, "bitsandbytes")
    q = LoadOptions(load_in_4bit=True, dtype="bf16").pretrained_kwargs()
    assert q["quantization_config"].load_in_4bit and q["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    assert q["device_map"] == {"": "cpu"}  # quantized weights are placed while loading, never moved


def test_a_spreading_device_map_needs_one_process(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--device-map auto under a launch of 2 processes: .* use --device cuda"):
        LoadOptions(device_map="auto").pretrained_kwargs()
    assert LoadOptions(device_map="cpu").pretrained_kwargs()["device_map"] == {"": "cpu"}  # one device: fine


def test_stage_configs_take_the_block_flat_and_keep_device_dtype(tmp_path, monkeypatch) -> None:
    from rlaifv.stages.feedback import FeedbackConfig
    from rlaifv.training.dpo import DPOConfig

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "sample": {"device": "cpu", "dtype": "bfloat16"},  # the keys configs always had
        "conquer": {"device_map": {"": "cpu"}, "max_memory": {"cpu": "2GiB"}, "attn_implementation": "eager"},
        "divide": {"llm": {"dtype": "bf16", "trust_remote_code": True}}}))
    cfg = load_config(FeedbackConfig, path)
    assert (cfg.sample.device, cfg.sample.dtype) == ("cpu", "bfloat16")
    kw = LoadOptions.of(cfg.conquer).pretrained_kwargs()
    assert kw["device_map"] == {"": "cpu"} and kw["max_memory"] == {"cpu": "2GiB"} and kw["attn_implementation"] == "eager"
    assert cfg.divide.llm.trust_remote_code is True and cfg.ask.llm.trust_remote_code is False
    path.write_text("conquer:\n  max_memory: cpu=2GiB\n")
    with pytest.raises(ConfigError, match="--max-memory cpu=2GiB needs --device-map"):
        load_config(FeedbackConfig, path)
    _with(monkeypatch, "bitsandbytes")
    with pytest.raises(ConfigError, match="cannot be fully fine-tuned; use --finetune lora"):
        DPOConfig(load_in_4bit=True, finetune="full")


def test_labeler_flags_replace_the_inherited_placement(fake_gpus) -> None:
    from rlaifv.cli_options import model_flags

    flags = model_flags({"device": "cuda:0", "dtype": "bf16", "device_map": None, "load_in_4bit": False},
                        {"device_map": "auto", "max_memory": "0=10GiB,1=40GiB", "device": None})
    assert flags.model == {"device": "cuda:0", "dtype": "bf16"}
    assert flags.labeler == {"dtype": "bf16", "device_map": "auto", "max_memory": "0=10GiB,1=40GiB"}
    assert model_flags({"device_map": "auto", "max_memory": "0=20GiB"}, {"dtype": "float16"}).labeler == \
        {"device_map": "auto", "max_memory": "0=20GiB", "dtype": "float16"}  # not a placement flag: the rest is kept
    feedback = model_flags({"device": "cuda"}, {"device": "cuda:1"}).feedback()
    assert feedback == {"sample": {"device": "cuda"}, "conquer": {"device": "cuda:1"},
                        "divide": {"llm": {"device": "cuda"}}, "ask": {"llm": {"device": "cuda"}}}


# ----------------------------------------------------------------------------- loading


def _spy(monkeypatch, cls) -> list[dict]:
    calls: list[dict] = []
    real = cls.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_load_vlm_passes_the_options(monkeypatch, tiny_vlm) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlaifv.models.load import load_vlm

    models, processors = _spy(monkeypatch, AutoModelForImageTextToText), _spy(monkeypatch, AutoProcessor)
    opts = LoadOptions(dtype="bfloat16", device_map="auto", max_memory="cpu=4GiB", attn_implementation="eager", trust_remote_code=True)
    model, _ = load_vlm(tiny_vlm, options=opts)
    # (transformers converts max_memory in place: 4GiB read as bytes)
    assert models[-1] == {"dtype": torch.bfloat16, "device_map": "auto", "max_memory": {"cpu": 4 * 2**30},
                          "attn_implementation": "eager", "trust_remote_code": True}
    assert processors[-1] == {"trust_remote_code": True}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # really bf16 weights
    assert model.config._attn_implementation == "eager" and model.config.text_config._attn_implementation == "eager"
    assert model.device == torch.device("cpu") and not model.training
    # a single-device map: transformers 5 places the model there (it sets hf_device_map only across devices)
    model, _ = load_vlm(tiny_vlm, options=LoadOptions(device_map={"": "cpu"}))
    assert models[-1]["device_map"] == {"": "cpu"} and getattr(model, "hf_device_map", {"": "cpu"}) == {"": "cpu"}
    assert {p.device.type for p in model.parameters()} == {"cpu"} and {p.dtype for p in model.parameters()} == {torch.float32}
    # a stage config is its own options; the old positional device/dtype still work
    from rlaifv.stages.sample import SampleConfig

    model, _ = load_vlm(tiny_vlm, options=SampleConfig(dtype="bf16", attn_implementation="eager"))
    assert models[-1] == {"dtype": torch.bfloat16, "attn_implementation": "eager", "trust_remote_code": False}
    model, _ = load_vlm(tiny_vlm, "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and models[-1] == {"dtype": torch.bfloat16, "trust_remote_code": False}


def test_adapter_base_loads_with_the_options(tmp_path, tiny_vlm) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    from rlaifv.models.load import load_vlm
    from rlaifv.training.model_setup import lora_target_modules

    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=lora_target_modules(base, "all-linear")))
    peft.save_pretrained(tmp_path / "adapter")
    model, _ = load_vlm(tmp_path / "adapter", options=LoadOptions(dtype="bfloat16", attn_implementation="eager"))
    assert isinstance(model, PeftModel)
    inner = model.get_base_model()
    assert inner.config._attn_implementation == "eager"
    assert {p.dtype for n, p in inner.named_parameters() if "lora_" not in n} == {torch.bfloat16}


def test_chat_llm_loads_with_the_options(tiny_chat_llm) -> None:
    from rlaifv.stages.llm import HFChatLM, LLMConfig

    cfg = LLMConfig(model_path=str(tiny_chat_llm), dtype="bfloat16", attn_implementation="eager", device_map="auto")
    lm = HFChatLM(cfg.model_path, options=cfg)
    assert lm.model.dtype == torch.bfloat16 and lm.model.config._attn_implementation == "eager"
    assert lm.device == torch.device("cpu")  # inputs follow the model's first layer
    assert len(lm.chat([[{"role": "user", "content": "Is there a dog?"}]], temperature=0.0, max_new_tokens=2)) == 1


# ----------------------------------------------------------------------------- the command line


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``rlaifv ARGS`` in this process, as the console script runs it: (exit code, output)."""
    from rlaifv.cli import main

    monkeypatch.setattr(sys, "argv", ["rlaifv", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


@pytest.mark.parametrize("args, message", [
    (["sample", "--prompts", "p.jsonl", "--out", "o", "--load-in-4bit"], "error: --load-in-4bit: bitsandbytes is not installed; pip install bitsandbytes"),
    (["conquer", "--questions", "q", "--prompts", "p.jsonl", "--out", "o", "--max-memory", "0=20GiB"], "error: --max-memory 0=20GiB needs --device-map"),
    (["feedback", "--sandbox-prompts", "2", "--device", "cuda"], "error: --device cuda: this torch"),
    (["best-of-n", "--device", "cuda", "--device-map", "auto"], "error: --device-map auto with --device cuda"),
    (["iterate", "--labeler-device-map", "auto", "--labeler-max-memory", "cpu=2XB"], "error: --labeler-max-memory cpu=2XB: size '2XB'"),
    (["eval", "--dtype", "int8"], "error: --dtype: unknown dtype 'int8'"),
    (["divide", "--candidates", "c", "--prompts", "p.jsonl", "--out", "o", "--backend", "llm", "--attn-implementation", "flash_attention_2"],
     "error: --attn-implementation flash_attention_2: flash-attn is not installed"),
    (["ask", "--claims", "c", "--out", "o", "--backend", "llm", "--device-map", "nowhere"], "error: --device-map 'nowhere'"),
])
def test_bad_flags_are_one_line_errors(monkeypatch, capsys, tmp_path, no_gpu, args, message) -> None:
    """Checked before any input is read or folder written: one line, exit code 2, no traceback."""
    monkeypatch.chdir(tmp_path)
    _without(monkeypatch, "bitsandbytes", "flash_attn")
    code, out = _main(monkeypatch, capsys, *args)
    assert code == 2, out
    assert out.strip().startswith(message) and len(out.strip().splitlines()) == 1, out
    assert "Traceback" not in out and list(tmp_path.iterdir()) == []


def test_train_device_cuda_without_cuda_is_one_line(tmp_path, rlaifv_bin) -> None:
    """The finding, as a user meets it: was torch's AssertionError("Torch not compiled with CUDA
    enabled") from the reference pass, after the run folder and manifest were written."""
    pairs, prompts = tmp_path / "pairs", tmp_path / "prompts.jsonl"
    pairs.mkdir()
    prompts.write_text("")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for torch, whatever the build
    res = subprocess.run([*rlaifv_bin, "train", "--device", "cuda", "--pairs", str(pairs), "--prompts", str(prompts),
                          "--model", "sandbox:policy", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert out.strip().splitlines() == [out.strip().splitlines()[0]] and out.startswith("error: --device cuda: this torch"), out
    assert "AssertionError" not in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


class _Captured(Exception):
    pass


@pytest.mark.parametrize("command, target, args, check", [
    ("feedback", "rlaifv.stages.feedback.feedback",
     ["--sandbox-prompts", "2", "--device", "cuda:0", "--dtype", "bf16", "--labeler-device-map", "auto",
      "--labeler-max-memory", "0=10GiB,1=40GiB", "--trust-remote-code"],
     lambda c: (c.sample.device, c.sample.dtype, c.sample.trust_remote_code, c.conquer.device, c.conquer.device_map,
                c.conquer.max_memory, c.conquer.dtype, c.divide.llm.device)
     == ("cuda:0", "bf16", True, "cpu", "auto", "0=10GiB,1=40GiB", "bf16", "cuda:0")),
    ("best-of-n", "rlaifv.stages.bestofn.best_of_n_run",
     ["--sandbox-prompts", "2", "--device-map", "auto", "--attn-implementation", "eager", "--labeler-device", "cuda:3"],
     lambda c: (c.sample.device_map, c.sample.attn_implementation, c.conquer.device, c.conquer.device_map, c.conquer.attn_implementation)
     == ("auto", "eager", "cuda:3", None, "eager")),
    ("iterate", "rlaifv.cli_loop._run_iterate", ["--sandbox-prompts", "2", "--seed", "3", "--dtype", "float16", "--labeler-dtype", "bf16"],
     lambda c: (c.train.dtype, c.feedback.sample.dtype, c.feedback.sample.seed, c.feedback.conquer.dtype) == ("float16", "float16", 3, "bf16")),
    ("train", "rlaifv.training.dpo.train_dpo", ["--pairs", "p", "--prompts", "q", "--device", "cuda", "--load-in-8bit"],
     lambda c: (c.device, c.load_in_8bit, c.dtype) == ("cuda", True, "float32")),
    ("conquer", "rlaifv.stages.feedback.run_conquer", ["--questions", "q", "--prompts", "p.jsonl", "--out", "o", "--device", "cuda:2"],
     lambda c: c.device == "cuda:2"),
])
def test_flags_reach_the_stage_configs(monkeypatch, tmp_path, fake_gpus, command, target, args, check) -> None:
    """The flags as parsed by the real commands, caught where the stage would start."""
    from typer.testing import CliRunner

    from rlaifv.cli import app

    _with(monkeypatch, "bitsandbytes")
    module, name = target.rsplit(".", 1)
    seen = []

    def stub(cfg, *a, **k):
        seen.append(cfg)
        raise _Captured

    monkeypatch.setattr(importlib.import_module(module), name, stub)
    monkeypatch.setattr("rlaifv.cli._prompts_file", lambda *a, **k: ([], Path("p.jsonl")))
    monkeypatch.setattr("rlaifv.cli._inputs", lambda *a, **k: [])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [command, *args])
    assert isinstance(res.exception, _Captured), res.output
    assert check(seen[0]), seen[0]


def test_every_model_command_lists_the_same_flags() -> None:
    from typer.testing import CliRunner

    from rlaifv.cli import app

    runner = CliRunner()
    for command, labeler in MODEL_COMMANDS.items():
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}, terminal_width=250)
        assert res.exit_code == 0, res.output
        listed = {f for f in LOAD_FLAGS + LABELER_FLAGS if f" {f} " in res.output}
        assert listed == set(LOAD_FLAGS + (LABELER_FLAGS if labeler else [])), (command, listed)
        assert "Model loading" in res.output
    assert "--device-map" not in runner.invoke(app, ["pairs", "--help"], env={"COLUMNS": "250"}).output  # loads no model
