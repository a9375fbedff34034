"""Benchmark: ``rlaifv train``'s own DPO loop vs TRL 1.16 ``DPOTrainer`` on the same model and pairs.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trainer_choice.py [--model sandbox:policy-direct] [--pairs 64] [--batch 8] [--steps 8]`.

Why: issue 14 asks whether ``rlaifv train`` should keep its own loop (cached reference
log-probs, one model in memory) and add the scale features through accelerate, or hand the
training to TRL's ``DPOTrainer`` (``trainer: trl``) and inherit them. This measures both on the
same tiny model, pairs, global batch, step count and optimizer (AdamW, full fine-tuning), each
variant in its own fresh process (so peak RSS is that variant's alone), one thread each:

* ``rlaifv``: ``training.dpo.train_dpo`` with a warm reference cache (the reference pass is a
  one-off cost, timed separately by the ``refcache`` child and shared by every variant).
* ``trl+ref``: TRL's default, a resident deep-copied reference model forwarded every step.
* ``trl+cached``: TRL fed rlaifv's cached reference log-probs as ``ref_chosen_logps`` /
  ``ref_rejected_logps`` columns. TRL 1.16 refuses ``precompute_ref_log_probs=True`` for image
  data (checked here: the ``ValueError`` is recorded), and its vision collator drops those
  columns, so this variant wraps the collator and sets ``precompute_ref_logps`` after
  ``__init__`` (the reference copy TRL needs at construction is freed before training): the
  best case a ``trainer: trl`` mode could reach.

The step-1 loss is log 2 = 0.6931 when the policy's log-probs equal the reference's (policy =
reference at the start); TRL renders the answer through the chat template and so also scores
the newline after EOS, which rlaifv's cache does not: ``trl+cached`` then starts off log 2.
Each variant runs ``--repeats`` times, the variants alternating (rlaifv, trl+ref, trl+cached,
rlaifv, ...) so that load from other jobs on a shared machine spreads over all of them. Time per
step: the median over repeats of each run's median step (steps 2..N; step 1 holds one-time
set-up), and the fastest single step seen (the least disturbed by other jobs). Peak RSS is the
process's ``ru_maxrss`` (median over repeats); "RSS base" is after imports and loading the model
(before training). Prints a Markdown table with the ratios to ``rlaifv``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = ("rlaifv", "trl+ref", "trl+cached")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _data(work: Path, n: int):
    """The same pairs for every child (bench_dpo's true-vs-hallucinated sandbox pairs), written once."""
    from bench_dpo import make_pairs

    from rlaifv.records import PreferencePair
    from rlaifv.store import RecordStore

    pairs_dir = work / "pairs"
    if not pairs_dir.exists():
        pairs, _, _ = make_pairs(work / "data", n)
        with RecordStore(pairs_dir, PreferencePair) as store:
            store.write(pairs)
    prompts = next((work / "data").rglob("prompts.jsonl"))
    return pairs_dir, prompts


def _dpo_cfg(a, work: Path):
    from rlaifv.training.dpo import DPOConfig

    pairs, prompts = _data(work, a.pairs)
    return DPOConfig(model=a.model, pairs=str(pairs), prompts=str(prompts), out=str(work / "rlaifv"), finetune="full",
                     lr=1e-5, batch_size=a.batch, epochs=a.steps * a.batch / a.pairs, checkpoints_per_epoch=1,
                     warmup_ratio=0.0, device="cpu", ref_cache=str(work / "ref_cache"), progress=False)


def child_refcache(a, work: Path) -> dict:
    """The one-off reference pass (shared prefix per prompt), cached where every variant reads it."""
    from rlaifv.models.load import load_vlm
    from rlaifv.training.data import load_pairs
    from rlaifv.training.refcache import cached_reference_logps

    cfg = _dpo_cfg(a, work)
    pairs, prompts, base = load_pairs(cfg.pairs, cfg.prompts)
    t = time.perf_counter()
    ref, folder, _ = cached_reference_logps(cfg.model, pairs, prompts, base, Path(cfg.ref_cache), lambda m: load_vlm(m, device="cpu"))
    (work / "ref.json").write_text(json.dumps(ref))
    return {"seconds": time.perf_counter() - t}


def child_rlaifv(a, work: Path) -> dict:
    import rlaifv.training.dpo as dpo

    cfg = _dpo_cfg(a, work)
    stamps: list[float] = []
    base_rss: list[float] = []

    @contextmanager
    def timed_bar(*_args, **_kw):  # the loop reports every finished step to its progress bar
        base_rss.append(_rss_mb())
        yield lambda *x: stamps.append(time.perf_counter())

    dpo.progress_bar = timed_bar
    summary = dpo.train_dpo(cfg)
    assert summary["steps"] == a.steps, summary["steps"]
    first = json.loads((Path(cfg.out) / "log.jsonl").read_text().splitlines()[0])["loss"]
    return {"step_times": [b - s for s, b in zip(stamps, stamps[1:])], "rss_base_mb": base_rss[-1], "first_loss": first}


def _trl_dataset(cfg):
    from datasets import Dataset

    from rlaifv.images import load_image
    from rlaifv.training.data import load_pairs

    pairs, prompts, base = load_pairs(cfg.pairs, cfg.prompts)
    ref = json.loads((Path(cfg.ref_cache).parent / "ref.json").read_text())
    return Dataset.from_dict({
        "images": [[load_image(prompts[p.prompt_id], base)] for p in pairs],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]}] for p in pairs],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": p.chosen}]}] for p in pairs],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": p.rejected}]}] for p in pairs],
        "ref_chosen_logps": [ref[p.id]["chosen_logp"] for p in pairs],
        "ref_rejected_logps": [ref[p.id]["rejected_logp"] for p in pairs],
    })


def child_trl(a, work: Path, cached: bool) -> dict:
    import copy
    import gc

    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from rlaifv.models.load import load_vlm

    cfg = _dpo_cfg(a, work)
    ds = _trl_dataset(cfg)
    policy, processor = load_vlm(cfg.model, device="cpu")
    kw = dict(output_dir=str(work / "trl"), use_cpu=True, max_length=None, report_to=[], save_strategy="no", logging_steps=1,
              per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-5, lr_scheduler_type="cosine",
              beta=0.1, bf16=False, weight_decay=0.01, max_grad_norm=1.0, remove_unused_columns=False, disable_tqdm=True)
    refused = ""
    try:
        DPOTrainer(model=policy, ref_model=None, args=TRLConfig(**kw, precompute_ref_log_probs=True), train_dataset=ds, processing_class=processor)
    except ValueError as e:  # TRL 1.16: "not supported for vision datasets"
        refused = str(e).split(".")[0]
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            stamps.append(time.perf_counter())

    train_ds = ds if cached else ds.remove_columns(["ref_chosen_logps", "ref_rejected_logps"])
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=TRLConfig(**kw), train_dataset=train_ds,
                         processing_class=processor, callbacks=[Stamp()])
    if cached:  # feed the cached columns past the vision collator; no reference model during training
        collate = trainer.data_collator

        def with_ref(examples):
            rc = torch.tensor([e.pop("ref_chosen_logps") for e in examples])
            rr = torch.tensor([e.pop("ref_rejected_logps") for e in examples])
            return {**collate(examples), "ref_chosen_logps": rc, "ref_rejected_logps": rr}

        trainer.data_collator = with_ref
        trainer.ref_model = None
        trainer.precompute_ref_logps = True
        gc.collect()
    base = _rss_mb()
    trainer.train()
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"step_times": [b - s for s, b in zip(stamps, stamps[1:])], "rss_base_mb": base, "first_loss": first,
            "precompute_refused": refused}


def _run_child(variant: str, a, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--model", a.model, "--pairs", str(a.pairs),
           "--batch", str(a.batch), "--steps", str(a.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / f"{variant}.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sandbox:policy-direct")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=("refcache",) + VARIANTS)
    ap.add_argument("--work")
    a = ap.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(1)
        work = Path(a.work)
        fn = {"refcache": child_refcache, "rlaifv": child_rlaifv, "trl+ref": lambda a, w: child_trl(a, w, False),
              "trl+cached": lambda a, w: child_trl(a, w, True)}[a.child]
        res = fn(a, work)
        res["rss_peak_mb"] = _rss_mb()
        (work / f"{a.child}.json").write_text(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ref = _run_child("refcache", a, work)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(a.repeats):
            for v in VARIANTS:
                runs[v].append(_run_child(v, a, work))
                shutil.rmtree(work / "rlaifv", ignore_errors=True)  # a fresh run folder (cache kept)
    print(f"model {a.model}, {a.pairs} pairs, batch {a.batch}, {a.steps} steps (full fine-tuning, AdamW), 1 thread per process, "
          f"{a.repeats} repeats alternating")
    print(f"one-off reference pass (shared prefix, cached; every variant reads it): {ref['seconds']:.2f} s")
    refused = runs["trl+cached"][0].get("precompute_refused")
    print(f"TRL precompute_ref_log_probs=True on image pairs: {'refused: ' + refused if refused else 'accepted'}")
    row = {v: _summarize(rs) for v, rs in runs.items()}
    m = row["rlaifv"]
    print("| trainer | models resident while training | s/step (median) | x rlaifv | fastest step s | x rlaifv | peak RSS MB | RSS base MB | "
          "peak - base MB | x rlaifv | step-1 loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        r = row[v]
        print(f"| {v} | {2 if v == 'trl+ref' else 1} | {r['step']:.4f} | {r['step'] / m['step']:.2f} | {r['fastest']:.4f} | "
              f"{r['fastest'] / m['fastest']:.2f} | {r['peak']:.0f} | {r['base']:.0f} | {r['inc']:.0f} | {r['inc'] / max(m['inc'], 1e-9):.2f} | "
              f"{r['first_loss']:.4f} |")
    print("per-repeat median s/step: " + "; ".join(f"{v} " + ", ".join(f"{statistics.median(r['step_times']):.3f}" for r in runs[v]) for v in VARIANTS))


def _summarize(rs: list[dict]) -> dict:
    """Medians over repeats (the step time of a run: its median step) and the fastest step seen."""
    return {"step": statistics.median(statistics.median(r["step_times"]) for r in rs),
            "fastest": min(min(r["step_times"]) for r in rs),
            "peak": statistics.median(r["rss_peak_mb"] for r in rs), "base": statistics.median(r["rss_base_mb"] for r in rs),
            "inc": statistics.median(r["rss_peak_mb"] - r["rss_base_mb"] for r in rs), "first_loss": rs[0]["first_loss"]}


if __name__ == "__main__":
    main()
