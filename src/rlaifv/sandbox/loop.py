"""The sandbox's side of the loop: its preset, and its implementations of the stages' extension points.

Importing this module registers (``stages/extensions.py``, ``stages/conquer.py``):

* the ``"sandbox"`` prompt source: held-out scenes as prompt records (``sandbox_prompts``);
* the ``"sandbox"`` evaluator: sampled CHAIR / recall (and POPE F1) on held-out scenes, for
  ``iterate``'s ``selection.kind: sandbox`` (val scenes) and its report (``report_scenes``, test scenes);
* the stand-in conquer modes (``sandbox/standins.py``).

The ``rlaifv`` CLI imports it; the method's stages never do. :func:`sandbox_preset` is the
recipe ``rlaifv demo`` and ``rlaifv iterate --preset sandbox`` run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..stages.extensions import Evaluator, register_evaluator, register_prompt_source
from ..stages.iterate import SANDBOX_LABELER, SANDBOX_POLICY
from . import standins  # noqa: F401  (registers the stand-in conquer modes)
from .prompts import write_sandbox_prompts


def sandbox_metrics(model_path: str, n_scenes: int, seed: int, options: Any = None,
                    progress: Callable[[int, int, str], None] | None = None, pope: bool = False) -> dict[str, float]:
    """Selection: sampled CHAIR_i / CHAIR_s / recall / length (and mean POPE F1) on ``n_scenes`` val scenes.

    ``options``: how the model is loaded (``models.options.LoadOptions``, e.g. the run's train
    section); None: on the CPU in float32."""
    from ..models.load import load_vlm
    from .evaluate import SandboxEvalConfig, evaluate_sandbox

    model, processor = load_vlm(model_path, options=options) if options is not None else load_vlm(model_path)
    cfg = SandboxEvalConfig(n_scenes=n_scenes, split="val", seed=seed, pope=pope, claims=False, greedy=False)
    res = evaluate_sandbox(model, processor, cfg, progress=progress)
    s = res["describe"]["sampled"]
    out = {"chair_i": s["chair_i"], "chair_s": s["chair_s"], "recall": s["recall"], "avg_length": s["avg_length"]}
    if pope:
        out["pope_f1"] = sum(v["f1"] for v in res["pope"].values()) / len(res["pope"])
    return out


def sandbox_report(model_path: str, n_scenes: int, pope: bool, options: Any = None,
                   progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Report: sampled-description CHAIR / recall / length and mean POPE F1 on ``n_scenes`` test scenes."""
    from ..models.load import load_vlm
    from .evaluate import SandboxEvalConfig, evaluate_sandbox

    model, processor = load_vlm(model_path, options=options) if options is not None else load_vlm(model_path)
    ev = SandboxEvalConfig(n_scenes=n_scenes, split="test", pope=pope, claims=False, greedy=False)
    res = evaluate_sandbox(model, processor, ev, progress=progress)
    s = res["describe"]["sampled"]
    row = {"chair_s": s["chair_s"], "chair_i": s["chair_i"], "recall": s["recall"], "avg_length": s["avg_length"],
           "attr_err": s["attr_error_rate"]}  # wrong attributes: false claims CHAIR_i does not count
    if "pope" in res:
        row["pope_f1"] = sum(v["f1"] for v in res["pope"].values()) / len(res["pope"])
    return row


def _write_prompts(folder: Path, n: int, split: str, start: int) -> Path:
    return write_sandbox_prompts(folder, n, split=split, start=start)


def sandbox_preset(out: str = "runs/iterate"):
    """The sandbox recipe of RESULTS.md section 3 (sandbox-notes.md: DPO + NLL 1, lr 1e-4, batch 16).

    The labeler judges claims with ``describe_then_match``, the sandbox-only stand-in in which
    the shipped ``sandbox:labeler`` describes and the sandbox parser matches (an upper bound: the
    method's own direct read-out is :func:`sandbox_direct_preset`, which ``rlaifv demo`` runs). Pairs: no length balancing, which in the
    sandbox drops most object-hallucination pairs (a hallucination is an extra sentence), and
    ``keep_support`` instead (no pair whose chosen answer wins by stating fewer accepted claims);
    measured side by side in RESULTS.md. Selection guards: recall within 0.03 and POPE F1
    within 0.10 of the starting policy's, else the current policy is kept (RESULTS.md, 3.3).
    Returns an ``IterateConfig``.
    """
    from ..stages.iterate import IterateConfig

    cfg = IterateConfig(out=out, policy=SANDBOX_POLICY, labeler=SANDBOX_LABELER, sandbox_prompts=200, report_scenes=200)
    cfg.feedback.sample.max_new_tokens = 128
    cfg.feedback.conquer.mode = "describe_then_match"
    cfg.feedback.on_error = "skip"
    cfg.feedback.pairs.length_balance = False
    cfg.feedback.pairs.keep_support = True
    cfg.train = replace(cfg.train, finetune="full", lr=1e-4, epochs=3.0, batch_size=16, nll_weight=1.0, warmup_ratio=0.1,
                        checkpoints_per_epoch=1)
    cfg.selection.kind = "sandbox"
    cfg.selection.n_scenes = 100
    cfg.selection.pope_tolerance = 0.10
    cfg.selection.keep_current = True
    return cfg


def sandbox_direct_preset(out: str = "runs/iterate"):
    """The method's own conquer in the sandbox (what ``rlaifv demo`` runs): the ``sandbox`` recipe
    with ``conquer.mode = direct`` (p_yes / p_no of the labeler's first answer token, RLAIF-V
    Sec. 3.2), the shipped ``sandbox:labeler-direct`` as labeler and ``sandbox:policy-direct``
    (it hallucinates in its descriptions but answers claim questions well) as the starting
    policy, so ``--labeler self`` is self-feedback through its own yes/no. Both checkpoints come
    from ``rlaifv sandbox finetune-labeler --preset NAME`` (RESULTS.md, section 1b)."""
    cfg = sandbox_preset(out)
    cfg.policy, cfg.labeler = "sandbox:policy-direct", "sandbox:labeler-direct"
    cfg.feedback.conquer.mode = "direct"
    return cfg


#: ``rlaifv iterate --preset NAME``
PRESETS = {"sandbox": sandbox_preset, "sandbox-direct": sandbox_direct_preset}


def register() -> None:
    """Register the sandbox prompt source and evaluator (done on import; idempotent)."""
    register_prompt_source("sandbox", _write_prompts)
    register_evaluator(Evaluator("sandbox", sandbox_metrics, sandbox_report))


register()
