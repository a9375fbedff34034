"""Benchmark: a DPO step with cached reference log-probs vs a reference-model forward every step.

Run: `.venv/bin/python bench/bench_dpo.py [--model sandbox:policy] [--pairs 64] [--batch 16] [--threads 2]`.
Builds ``--pairs`` sandbox preference pairs (a true description vs the same with an extra,
absent object), then times optimizer steps of the same full fine-tune on the same batches two
ways, alternating, in one process: (a) rlaifv's training step, which reads the reference
log-probs computed once beforehand (``training.refcache``, timed separately as a one-off
cost), and (b) the TRL default, a no-grad forward of a resident reference copy each step.
Both give the same loss on the first step (checked). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from rlaifv.models.load import load_vlm
from rlaifv.records import PreferencePair, Prompt
from rlaifv.sandbox.prompts import write_sandbox_prompts
from rlaifv.sandbox.tasks import sentence
from rlaifv.sandbox.world import WorldConfig
from rlaifv.store import read_records
from rlaifv.training.data import prepare_examples
from rlaifv.training.dpo import _pair_logps
from rlaifv.training.losses import dpo_loss
from rlaifv.training.refcache import compute_reference_logps


def make_pairs(folder: Path, n: int) -> tuple[list[PreferencePair], dict[str, Prompt], Path]:
    """n pairs over n sandbox scenes: the true description vs it plus one hallucinated object."""
    from rlaifv.sandbox.prompts import scene_of
    from rlaifv.sandbox.tasks import hallucinated_object

    path = write_sandbox_prompts(folder, n)
    prompts = {p.prompt_id: p for p in read_records(path, Prompt)}
    rng, world = random.Random(0), WorldConfig()
    pairs = []
    for p in prompts.values():
        scene = scene_of(p)
        true = " ".join(sentence(o) for o in scene.objects)
        fake = true + " " + sentence(hallucinated_object(scene, rng, world))
        pairs.append(PreferencePair(p.prompt_id, p.question, p.image, true, fake, f"{p.prompt_id}#0", f"{p.prompt_id}#1", 0.0, -1.0))
    return pairs, prompts, path.parent


def step(model, processor, opt, examples, ref_fn) -> float:
    pc, pr, _ = _pair_logps(model, processor, examples)
    rc, rr = ref_fn(examples)
    loss = dpo_loss(pc, pr, rc, rr).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sandbox:policy")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pairs, prompts, base = make_pairs(Path(tmp), a.pairs)
        model, processor = load_vlm(a.model)
        examples = prepare_examples(pairs, prompts, base, processor)
        t = time.perf_counter()
        cache = compute_reference_logps(model, processor, pairs, prompts, base, Path(tmp) / "ref.jsonl")
        cache_s = time.perf_counter() - t
        ref_model = copy.deepcopy(model).eval()

        def cached(ex):
            return (torch.tensor([cache[e.pair.id]["chosen_logp"] for e in ex]), torch.tensor([cache[e.pair.id]["rejected_logp"] for e in ex]))

        def forward(ex):
            with torch.no_grad():
                c, r, _ = _pair_logps(ref_model, processor, ex)
            return c, r

        batches = [examples[i : i + a.batch] for i in range(0, len(examples), a.batch)]
        models = {"cached": copy.deepcopy(model), "ref forward": copy.deepcopy(model)}
        opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for k, m in models.items()}
        fns = {"cached": cached, "ref forward": forward}
        times = {k: 0.0 for k in models}
        first = {}
        for b in batches:  # alternate the two ways on the same batch
            for k in models:
                t = time.perf_counter()
                loss = step(models[k], processor, opts[k], b, fns[k])
                times[k] += time.perf_counter() - t
                first.setdefault(k, loss)
        assert abs(first["cached"] - first["ref forward"]) < 1e-4, first
    n = len(batches)
    print(f"model {a.model}, {a.pairs} pairs, batch {a.batch}, {n} steps, {a.threads} threads, {platform.processor() or platform.machine()}")
    print(f"one-off reference pass (shared prefix, cached to disk): {cache_s:.2f} s")
    print("| reference | s/step | steps/s | models resident |\n|---|---|---|---|")
    for k, resident in (("ref forward", 2), ("cached", 1)):
        print(f"| {k} | {times[k] / n:.3f} | {n / times[k]:.2f} | {resident} |")
    print(f"speed-up of cached: {times['ref forward'] / times['cached']:.2f}x")


if __name__ == "__main__":
    main()
