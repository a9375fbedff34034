"""``rlaifv sandbox finetune-labeler``: the ``labeler-direct`` recipe (``sandbox/direct_labeler.py``)
registered on the ``sandbox`` group of the one ``rlaifv`` app (``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import UserError, _metric_table, console, sandbox_app


@sandbox_app.command("finetune-labeler")
def finetune_labeler_cmd(
    out: Path = typer.Option(..., help="Output checkpoint folder (plain save_pretrained VLM + rlaifv_finetune.json)."),
    preset: str = typer.Option("labeler-direct", help="labeler-direct (from sandbox:labeler) | policy-direct (from sandbox:policy, "
                               "keeps its noisy captions: a policy with a generative-discriminative gap)."),
    init_from: Optional[str] = typer.Option(None, help="Starting model (default: the preset's, sandbox:labeler or sandbox:policy)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default 3400: one warm-up + cosine run)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default 0)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 1e-3)."),
    log_every: Optional[int] = typer.Option(None, help="Log the fixed val probe set every N steps (default 200)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with DirectLabelerConfig fields."),
    eval_scenes: int = typer.Option(400, help="Fresh test scenes to evaluate on after training (0: skip)."),
    eval_start: int = typer.Option(10_000, help="First test-scene index of that slice (no recipe was tuned on it)."),
) -> None:
    """Fine-tune the sandbox labeler to answer claim questions directly (p_yes / p_no of its first answer token)."""
    from .config import load_config
    from .eval.report import write_json
    from .progress import progress_bar
    from .sandbox.direct_labeler import DirectLabelerConfig, finetune, fresh_eval
    from .sandbox.direct_labeler import preset as get_preset
    from .sandbox.evaluate import summary_row

    if preset not in ("labeler-direct", "policy-direct"):
        raise UserError(f"--preset: unknown preset {preset!r}; expected labeler-direct or policy-direct")
    over = {"init_from": init_from, "steps": steps, "seed": seed, "lr": lr, "log_every": log_every}
    cfg = load_config(DirectLabelerConfig, config, over, base=get_preset(preset))

    def on_log(step: int, res: dict) -> None:
        kinds = " ".join(f"{k} {v:.2f}" for k, v in res["accuracy_by_kind"].items())
        console.print(f"step {step}: val probe balanced acc {res['balanced_accuracy']:.3f} accuracy {res['accuracy']:.3f} F1 {res['f1']:.3f} "
                      f"yes-ratio {res['yes_ratio']:.2f} mass {res['mean_mass']:.3f} | {kinds}")

    with progress_bar(f"finetune {preset}") as bar:
        model, processor, log = finetune(cfg, out, progress=bar, on_log=on_log)
    console.print(f"saved {out} ({log['train_seconds']} s of training)")
    if eval_scenes:
        with progress_bar(f"fresh eval ({eval_scenes} test scenes from {eval_start})") as bar:
            res = fresh_eval(model, processor, eval_scenes, eval_start, progress=bar)
        write_json(Path(out) / "rlaifv_eval.json", res)
        _metric_table(f"{preset} on test scenes {eval_start}..{eval_start + eval_scenes - 1}", [summary_row(preset, res)])
        kinds = res["claims"]["direct"]["accuracy_by_kind"]
        _metric_table("direct claim accuracy per kind", [{"model": preset, **kinds}])
        if preset == "labeler-direct":
            marks = {k: f"{v['value']:.4f} (target {v['target']}: {'met' if v['met'] else 'MISSED'})" for k, v in res["targets"].items()}
            _metric_table("labeler targets (issue 10 part 1)", [{"model": preset, **marks}])
