"""`rlaifv train` scale features (training/scale.py) on the CPU, one process: bf16 autocast inside the
step, gradient checkpointing (same loss and gradients), max_steps, save_total_limit, TensorBoard,
one-line errors, the gathered-state save path, and the shipped accelerate config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_train import _cfg, _weights

ROOT = Path(__file__).resolve().parents[1]


def _hook_first_linear(monkeypatch, seen: list) -> None:
    """Record, inside every training forward, whether CPU autocast is on and the dtype a text
    decoder Linear produces (setup_trainable is wrapped so the hook sits on the trained model)."""
    import rlaifv.training.dpo as dpo
    from rlaifv.training.model_setup import language_model_prefix

    real = dpo.setup_trainable

    def wrapped(model, *a, **k):
        prefix = language_model_prefix(model) + "."
        lin = next(m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear))
        lin.register_forward_hook(lambda mod, inp, out: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype)))
        return real(model, *a, **k)

    monkeypatch.setattr(dpo, "setup_trainable", wrapped)


def test_bf16_mixed_precision_runs_the_step_under_cpu_autocast(tmp_path, tiny_sandbox_model, monkeypatch):
    from rlaifv.training.dpo import train_dpo

    seen: list = []
    _hook_first_linear(monkeypatch, seen)
    summary = train_dpo(_cfg(tmp_path / "bf16", tiny_sandbox_model, max_steps=1, mixed_precision="bf16"))
    assert seen and all(on and dtype == torch.bfloat16 and out == torch.bfloat16 for on, dtype, out in seen), seen
    assert summary["steps"] == 1 and 0 < summary["last"]["loss"] < 5
    seen.clear()
    train_dpo(_cfg(tmp_path / "fp32", tiny_sandbox_model, max_steps=1))  # control: the flag is what turns it on
    assert seen and all(not on and out == torch.float32 for on, _, out in seen), seen


def _loss_and_grads(model_dir, lora: bool, checkpointing: bool):
    from rlaifv.models.load import load_vlm
    from rlaifv.training.data import load_pairs, prepare_examples
    from rlaifv.training.dpo import _pair_logps
    from rlaifv.training.losses import dpo_loss
    from rlaifv.training.model_setup import setup_trainable
    from rlaifv.training.scale import enable_gradient_checkpointing
    from test_train import _pairs_data

    pairs_dir, prompts_file = _pairs_data(model_dir.parent / f"data-{lora}-{checkpointing}", n_prompts=2)
    pairs, prompts, base = load_pairs(pairs_dir, prompts_file)
    model, processor = load_vlm(model_dir, device="cpu")
    if checkpointing:
        enable_gradient_checkpointing(model, lora=lora)
    torch.manual_seed(0)
    model = setup_trainable(model, "lora" if lora else "full", True, 4, 8, 0.0, "all-linear")
    if lora:  # B starts at 0: move it so the LoRA A matrices get a gradient too
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn_like(p))
    model.train()
    calls = []
    layer = next(m for n, m in model.named_modules() if type(m).__name__.endswith("DecoderLayer"))
    layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # inside the checkpointed forward: reruns in backward
    ex = prepare_examples(pairs, prompts, base, processor)
    pc, pr, _ = _pair_logps(model, processor, ex)
    out = dpo_loss(pc, pr, torch.full_like(pc, -20.0), torch.full_like(pr, -20.0), beta=0.1)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, tiny_sandbox_model, lora):
    copy = tmp_path / "m" / "model"  # a fresh folder per variant (the data folders sit next to it)
    copy.parent.mkdir()
    import shutil

    shutil.copytree(tiny_sandbox_model, copy)
    loss0, g0, calls0 = _loss_and_grads(copy, lora, checkpointing=False)
    loss1, g1, calls1 = _loss_and_grads(copy, lora, checkpointing=True)
    assert (calls0, calls1) == (1, 2)  # the decoder layer ran again in backward: checkpointing was active
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert g0.keys() == g1.keys() and all(g0[k].abs().sum() > 0 for k in g0 if "lora_A" in k)
    assert all(torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-5) for k in g0)


def test_qlora_preparation_path(tiny_sandbox_model):
    """``prepare_quantized`` (PEFT's k-bit preparation, then our checkpointing) on a tiny model: the
    base frozen, only LoRA trains, checkpointing on and gradients reach the adapter. (Real 4-bit
    weights need bitsandbytes and a GPU: the smoke script.)"""
    from rlaifv.models.load import load_vlm
    from rlaifv.training.model_setup import setup_trainable
    from rlaifv.training.scale import prepare_quantized

    model, _ = load_vlm(tiny_sandbox_model, device="cpu")
    model = setup_trainable(prepare_quantized(model, gradient_checkpointing=True), "lora", True, 4, 8, 0.0, "all-linear")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_max_steps_stops_exactly_the_schedule_ends_at_zero_and_tensorboard_gets_each_step(tmp_path, tiny_sandbox_model):
    import importlib.util

    from rlaifv.training.dpo import list_checkpoints, train_dpo

    # 8 pairs, batch 2: 4 steps per epoch; max_steps 6 crosses into epoch 2 and overrides epochs=1
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # the dev extra installs it; optional for users
    cfg = _cfg(tmp_path, tiny_sandbox_model, max_steps=6, epochs=1.0, warmup_ratio=0.2, report_to="tensorboard" if tensorboard else "none")
    summary = train_dpo(cfg)
    log = _lines(Path(cfg.out) / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and summary["steps"] == 6
    assert log[-1]["lr"] == 0.0 and log[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 6)).item()) * 1.0)
    assert [p.name for p in list_checkpoints(cfg.out)] == ["step-000002", "step-000004", "step-000006"]  # 2 per epoch + the end
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = list((Path(cfg.out) / "logs").rglob("events.out.tfevents.*"))
        assert events, list((Path(cfg.out) / "logs").rglob("*"))
        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
        assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [round(r["loss"], 4) for r in log]
        assert acc.Scalars("train/lr")[-1].value == 0.0


def test_save_total_limit_keeps_the_last_k_and_never_a_selected_one(tmp_path, tiny_sandbox_model):
    from rlaifv.training.dpo import list_checkpoints, train_dpo

    run = tmp_path / "iter-1" / "train"  # rlaifv iterate's layout: iter-i/done.json names the selected checkpoint
    selected = run / "checkpoints" / "step-000002"
    (tmp_path / "iter-1").mkdir()
    (tmp_path / "iter-1" / "done.json").write_text(json.dumps({"selected": str(selected)}))
    cfg = _cfg(tmp_path, tiny_sandbox_model, out=str(run), max_steps=6, checkpoints_per_epoch=4, save_total_limit=2)
    summary = train_dpo(cfg)
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["step-000002", "step-000005", "step-000006"], names
    assert summary["checkpoints"] == [str(run / "checkpoints" / n) for n in names]
    assert all((run / "checkpoints" / n / "model.safetensors").exists() for n in names)
    assert (run / "resume" / "state.json").exists() and json.loads((run / "resume" / "state.json").read_text())["step"] == 6


def _cli(args: list[str], monkeypatch, capsys) -> str:
    """``rlaifv ARGS`` in this process through the console-script entry point; its one-line error."""
    from rlaifv.cli import main

    monkeypatch.setattr("sys.argv", ["rlaifv"] + args)
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    return out


def test_one_line_errors(tmp_path, tiny_sandbox_model, monkeypatch, capsys):
    from rlaifv.config import ConfigError
    from rlaifv.training import scale

    base = ["train", "--model", str(tiny_sandbox_model), "--pairs", str(tmp_path), "--prompts", str(tmp_path), "--out", str(tmp_path / "r")]
    real = scale.importlib.util.find_spec
    monkeypatch.setattr(scale.importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX", "wandb") else real(name, *a))
    for tracker, pkg in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        with pytest.raises(ConfigError, match=f"the {pkg} package is not installed; pip install {pkg}"):
            scale.check_report_to(tracker)
    scale.check_report_to("all")  # all = whatever is installed
    assert "wandb package is not installed; pip install wandb" in _cli(base + ["--report-to", "wandb"], monkeypatch, capsys)
    out = _cli(base + ["--mixed-precision", "fp16", "--device", "cpu"], monkeypatch, capsys)
    assert "fp16" in out and "use bf16" in out
    assert "expected one of no, bf16, fp16" in _cli(base + ["--mixed-precision", "fp8"], monkeypatch, capsys)
    assert "expected one of none, tensorboard, wandb, all" in _cli(base + ["--report-to", "mlflow"], monkeypatch, capsys)
    if scale.importlib.util.find_spec("bitsandbytes") is None:  # QLoRA on a CPU-only torch without bitsandbytes
        assert "bitsandbytes is not installed" in _cli(base + ["--load-in-4bit", "--finetune", "lora"], monkeypatch, capsys)


def test_yaml_no_means_no_mixed_precision(tmp_path):
    from rlaifv.config import load_config
    from rlaifv.training.dpo import DPOConfig

    f = tmp_path / "t.yaml"
    f.write_text("model: m\nmixed_precision: no\ngradient_checkpointing: true\nsave_total_limit: 3\nreport_to: tensorboard\n")
    cfg = load_config(DPOConfig, f)
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.save_total_limit, cfg.report_to) == ("no", True, 3, "tensorboard")


def test_gathered_state_save_equals_the_direct_save(tmp_path, tiny_sandbox_model):
    """The DeepSpeed/FSDP save path (a gathered state dict; merged LoRA rebuilt on a CPU copy)
    writes the same weights as the single-process path, and plain transformers loads both."""
    from rlaifv.models.load import load_vlm
    from rlaifv.training.model_setup import save_model, setup_trainable
    from rlaifv.training.scale import save_from_state

    for finetune in ("lora", "full"):
        cfg = _cfg(tmp_path / finetune, tiny_sandbox_model, finetune=finetune, lora_r=4)
        model, processor = load_vlm(tiny_sandbox_model, device="cpu")
        torch.manual_seed(0)
        model = setup_trainable(model, finetune, cfg.freeze_vision, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        save_model(model, processor, tmp_path / finetune / "direct", merge_lora=True, base=str(tiny_sandbox_model))
        save_from_state(model, processor, tmp_path / finetune / "gathered", model.state_dict(), cfg)
        a, b = _weights(tmp_path / finetune / "direct"), _weights(tmp_path / finetune / "gathered")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), finetune
        assert not any("lora" in k for k in b)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = ROOT / "configs" / "accelerate"
    got = {f.name: load_config_from_file(str(f)) for f in sorted(folder.glob("*.yaml"))}
    assert set(got) == {"ddp_8gpu.yaml", "multi_node.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}
    assert {k: (str(c.distributed_type).split(".")[-1], c.num_processes, c.num_machines) for k, c in got.items()} == {
        "ddp_8gpu.yaml": ("MULTI_GPU", 8, 1), "multi_node.yaml": ("MULTI_GPU", 16, 2), "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 1),
        "deepspeed_zero3.yaml": ("DEEPSPEED", 8, 1), "fsdp.yaml": ("FSDP", 8, 1)}
    assert got["deepspeed_zero2.yaml"].deepspeed_config["zero_stage"] == 2
    z3 = got["deepspeed_zero3.yaml"].deepspeed_config
    assert z3["zero_stage"] == 3 and z3["zero3_save_16bit_model"] is True
    fsdp = got["fsdp.yaml"].fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT" and fsdp["fsdp_use_orig_params"] is True
