"""Benchmark: deconfounded sampling with the prompt prefilled once vs duplicated n times.

Run: `.venv/bin/python bench/bench_sample.py [--prompts 8] [--n 10] [--new-tokens 32]`. Both ways
use the same per-candidate seeds, so they must produce the same texts (checked), and their wall
times are measured side by side in one run (best of ``--repeats``, alternating).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, train_tokenizer
from rlaifv.sandbox.pretrain import tokenizer_corpus
from rlaifv.sandbox.render import render
from rlaifv.sandbox.world import World
from rlaifv.stages.sample import SampleConfig, candidate_seed, generate_candidates

CFG = TinyVLMConfig(
    arch="idefics3", image_size=128, patch_size=8, scale_factor=2, vision_hidden=128, vision_layers=4, vision_heads=4,
    text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=4, intermediate=768, vocab_size=1024,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--per-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = World()
    tok = train_tokenizer(tokenizer_corpus(world, 200), "idefics3", CFG.vocab_size)
    model, proc = build_tiny_vlm(CFG, tok, seed=0)
    model.eval()
    images = [render(s, CFG.image_size) for s in world.scenes(args.prompts, "val")]
    questions = ["Describe the image in detail."] * args.prompts
    seeds = [[candidate_seed(0, str(i), k) for k in range(args.n)] for i in range(args.prompts)]
    # min_new_tokens keeps every candidate at the full length, so both ways decode the same work
    model.generation_config.min_new_tokens = args.new_tokens

    def run(share: bool):
        cfg = SampleConfig(n=args.n, max_new_tokens=args.new_tokens, temperature=1.0, share_prefill=share)
        out = []
        for i in range(0, args.prompts, args.per_batch):
            sl = slice(i, i + args.per_batch)
            out += generate_candidates(model, proc, images[sl], questions[sl], seeds[sl], cfg)
        return out

    best = {True: float("inf"), False: float("inf")}
    texts = {}
    for _ in range(args.repeats):
        for share in (False, True):
            t0 = time.perf_counter()
            texts[share] = run(share)
            best[share] = min(best[share], time.perf_counter() - t0)
    same = texts[True] == texts[False]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print(f"model: idefics3, {CFG.image_seq_len} image tokens, text {CFG.text_hidden}x{CFG.text_layers}; identical texts: {same}")
    print("| prompts x n | new tokens | prompts per batch | duplicated s | prefill once s | speed-up |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.prompts} x {args.n} | {args.new_tokens} | {args.per_batch} | {best[False]:.2f} | {best[True]:.2f} | {best[False] / best[True]:.2f}x |")
    if not same:
        raise SystemExit("shared-prefill candidates differ from duplicated-prompt candidates")


if __name__ == "__main__":
    main()
