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
    save_at: Optional[str] = typer.Option(None, help="Also save snapshots OUT/step-NNNNN after these steps (comma-separated): "
                                          "labelers of increasing quality from one run, for the labeler-quality curve."),
    stop_after: Optional[int] = typer.Option(None, help="End the run after this step (the schedule stays that of --steps); "
                                             "OUT then holds only the --save-at snapshots, each evaluated if --eval-scenes."),
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

    snaps = _steps_list(save_at, cfg.steps)
    if stop_after is not None and not 0 < stop_after <= cfg.steps:
        raise UserError(f"--stop-after {stop_after}: expected a step in 1..{cfg.steps}")
    with progress_bar(f"finetune {preset}") as bar:
        model, processor, log = finetune(cfg, out, progress=bar, on_log=on_log, save_at=snaps, stop_after=stop_after)
    if stop_after is not None and stop_after < cfg.steps:
        _eval_snapshots(out, snaps, eval_scenes, eval_start)
        return
    console.print(f"saved {out} ({log['train_seconds']} s of training)")
    _eval_snapshots(out, snaps, eval_scenes, eval_start)
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


def _steps_list(text: Optional[str], total: int) -> list[int]:
    """``--save-at 800,1600`` -> [800, 1600]; one error line for anything else."""
    if not text:
        return []
    try:
        steps = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--save-at {text!r}: expected comma-separated step numbers, e.g. 800,1600") from None
    if not steps or steps[0] < 1 or steps[-1] > total:
        raise UserError(f"--save-at {text!r}: steps must lie in 1..{total}")
    return steps


def _eval_snapshots(out: Path, steps: list[int], eval_scenes: int, eval_start: int) -> None:
    """Each snapshot's fresh test-scene evaluation (``rlaifv_eval.json`` in its folder) and one table."""
    if not steps or not eval_scenes:
        return
    from .eval.report import write_json
    from .models.load import load_vlm
    from .progress import progress_bar
    from .sandbox.direct_labeler import fresh_eval

    rows = []
    for step in steps:
        folder = Path(out) / f"step-{step:05d}"
        model, processor = load_vlm(str(folder))
        with progress_bar(f"fresh eval of step {step} ({eval_scenes} test scenes)") as bar:
            res = fresh_eval(model, processor, eval_scenes, eval_start, progress=bar)
        write_json(folder / "rlaifv_eval.json", res)
        d = res["claims"]["direct"]
        rows.append({"model": folder.name, "claim F1": d["f1"], "claim accuracy": d["accuracy"]})
    _metric_table(f"snapshots on test scenes {eval_start}..{eval_start + eval_scenes - 1} (direct yes/no)", rows)
