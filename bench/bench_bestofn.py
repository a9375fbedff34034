"""Benchmark: best-of-N reward scoring, shared prompt prefix vs one full forward per answer.

Run: `.venv/bin/python bench/bench_bestofn.py [--model sandbox:policy] [--prompts 6] [--n 16] [--threads 1]`.

The RLAIF-V reward needs every candidate's log-probs under two models, the aligned model and
its reference. Here they are the LoRA case: the sandbox policy with a random LoRA adapter
(q_proj, v_proj of the text model; non-zero weights) and the same model with the adapter
switched off, one model in memory. N candidates per prompt are sampled once with the policy
(``stages/sample.py``, not timed), then scored through the stage's own code path
(``stages/bestofn.role_logprobs``) both ways, side by side in one run (alternating, best of
``--repeats``): *naive* runs image + prompt + answer for every candidate (batched, right
padded); *shared* runs image + prompt once per model and the N answers batched on its KV cache.
Checks that both give the same summed log-probs and rewards (max abs diff < 1e-4) and prints a
Markdown table with candidates scored per second (each candidate scored under both models).
*shared* runs ``answer_logprobs``' default mode, ``packed`` since issue 14 (the N answers in one
sequence with a block mask); BENCHMARKS.md rows made before that measured the ``batched`` mode.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from rlaifv.models.chat import answer_ids, encode_prompt
from rlaifv.models.load import load_vlm
from rlaifv.records import Prompt
from rlaifv.sandbox.render import render
from rlaifv.sandbox.tasks import DESCRIBE_PROMPT
from rlaifv.sandbox.world import World
from rlaifv.stages.bestofn import BestOfNConfig, BestOfNModels, ScoringModel, implicit_reward, role_logprobs
from rlaifv.stages.sample import SampleConfig, sample


def build(name: str, n_prompts: int, n: int, max_new_tokens: int):
    """(models with the LoRA aligned/reference pair, images, candidate texts per image)."""
    from peft import LoraConfig, get_peft_model

    model, proc = load_vlm(name)
    scenes = World().scenes(n_prompts, "test")
    images = [render(s) for s in scenes]
    prompts = [Prompt(s.scene_id, DESCRIBE_PROMPT, image="-") for s in scenes]
    cands = sample(model, proc, prompts, images, SampleConfig(n=n, max_new_tokens=max_new_tokens, prompts_per_batch=n_prompts))
    texts = [[c.text for c in cands if c.prompt_id == p.prompt_id] for p in prompts]
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=r".*text_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft = get_peft_model(model, lora).eval()
    inner = peft.get_base_model()
    models = BestOfNModels(policy=ScoringModel(name, inner, proc), aligned=ScoringModel(f"{name}+lora", inner, proc, peft),
                           reference=ScoringModel(f"{name}+lora (adapter off)", inner, proc, peft, adapter_off=True))
    return models, proc, images, texts


def score_all(models, images, texts, cfg: BestOfNConfig) -> list[dict[str, list[torch.Tensor]]]:
    return [role_logprobs(models, ("aligned", "reference"), img, DESCRIBE_PROMPT, ts, cfg) for img, ts in zip(images, texts)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sandbox:policy")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models, proc, images, texts = build(args.model, args.prompts, args.n, args.max_new_tokens)
    shared_cfg = BestOfNConfig(score_batch_size=args.batch_size, reference="-")
    naive_cfg = BestOfNConfig(score_batch_size=args.batch_size, reference="-", share_prefix=False)
    score_all(models, images[:1], texts[:1], shared_cfg)  # warm-up
    score_all(models, images[:1], texts[:1], naive_cfg)
    t_naive = t_shared = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        naive = score_all(models, images, texts, naive_cfg)
        t_naive = min(t_naive, time.perf_counter() - t0)
        t0 = time.perf_counter()
        shared = score_all(models, images, texts, shared_cfg)
        t_shared = min(t_shared, time.perf_counter() - t0)
    diff = rdiff = 0.0
    for a, b in zip(naive, shared):
        for role in ("aligned", "reference"):
            diff = max(diff, max(abs(float(x.double().sum() - y.double().sum())) for x, y in zip(a[role], b[role])))
        ra = [implicit_reward(x, y, 0.1) for x, y in zip(a["aligned"], a["reference"])]
        rb = [implicit_reward(x, y, 0.1) for x, y in zip(b["aligned"], b["reference"])]
        rdiff = max(rdiff, max(abs(x - y) for x, y in zip(ra, rb)))
    n_cands = sum(len(t) for t in texts)
    ans_len = sum(len(answer_ids(proc, t)) for ts in texts for t in ts) / n_cands
    prompt_len = encode_prompt(proc, images[0], DESCRIBE_PROMPT)["input_ids"].shape[1]
    inner = models.policy.model
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print(f"model: {args.model} + random LoRA r=8 (q_proj, v_proj), {sum(p.numel() for p in inner.parameters()) / 1e6:.2f} M params; "
          f"prompt {prompt_len} tokens incl. image; answers {ans_len:.1f} tokens on average (incl. EOS)")
    ok = diff < 1e-4 and rdiff < 1e-4
    print(f"max |sum log p naive - shared| = {diff:.1e}, max |reward naive - shared| = {rdiff:.1e} (< 1e-4): {'OK' if ok else 'MISMATCH'}")
    print("| prompts x N | batch | threads | naive s | shared-prefix s | naive candidates/s | shared candidates/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.prompts} x {args.n} | {args.batch_size} | {args.threads} | {t_naive:.2f} | {t_shared:.2f} | "
          f"{n_cands / t_naive:.1f} | {n_cands / t_shared:.1f} | {t_naive / t_shared:.2f}x |")
    if not ok:
        raise SystemExit("shared-prefix log-probs differ from the naive ones")


if __name__ == "__main__":
    main()
