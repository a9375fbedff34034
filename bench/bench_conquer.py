"""Benchmark: conquer-stage yes/no scoring, naive (one full forward per question) vs shared prefix.

Run: `.venv/bin/python bench/bench_conquer.py [--images 20] [--questions 10] [--threads 2]`.
Builds a tiny Idefics3 labeler whose image takes 64 tokens (128 px, patch 8, pixel shuffle 2)
with a 256-wide, 4-layer text model, asks each image the same number of sandbox yes/no
questions (claims and probes, various lengths), and times ``generate.score_yes_no`` against
``prefix.score_yes_no_shared`` in the same process (alternating, best of ``--repeats``). Checks
that both give the same p_yes/p_no (max abs difference < 1e-4, and < 1e-3 in log space since
p_yes/p_no of a random model are small) and prints a Markdown table. The shared path runs in
``score_yes_no_shared``'s default mode, ``packed`` since issue 14 (all questions of an image in one
forward with a block mask); the BENCHMARKS.md rows made before that measured the ``batched`` mode.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import torch

from rlaifv.models.chat import encode_prompt
from rlaifv.models.generate import score_yes_no
from rlaifv.models.prefix import score_yes_no_shared
from rlaifv.models.tiny import TinyVLMConfig, build_tiny_vlm, train_tokenizer
from rlaifv.sandbox.render import render
from rlaifv.sandbox.tasks import sample_example
from rlaifv.sandbox.world import World

CFG = TinyVLMConfig(
    arch="idefics3", image_size=128, patch_size=8, scale_factor=2, vision_hidden=128, vision_layers=4, vision_heads=4,
    text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=4, intermediate=768, vocab_size=1024,
)


def build(n_images: int, n_questions: int):
    """(model, processor, images, questions per image) with a sandbox-trained tokenizer."""
    world = World()
    rng = random.Random(0)
    scenes = world.scenes(n_images)
    per_image: list[list[str]] = []
    corpus = ["yes no Yes No", "Please answer yes or no."] + ["Yes.", "No."] * 20
    for s in scenes:
        qs = [sample_example(s, rng.choice(("claim", "probe")), rng, world.config).question for _ in range(n_questions)]
        per_image.append(qs)
        corpus += qs + [sample_example(s, "describe", rng, world.config).answer]
    tok = train_tokenizer(corpus, "idefics3", vocab_size=CFG.vocab_size)
    model, processor = build_tiny_vlm(CFG, tok, seed=0)
    return model.eval(), processor, [render(s, CFG.image_size) for s in scenes], per_image


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--questions", type=int, default=40)  # ~10 candidates x 4 claims per image
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, processor, images, per_image = build(args.images, args.questions)
    flat_imgs = [img for img, qs in zip(images, per_image) for _ in qs]
    flat_qs = [q for qs in per_image for q in qs]
    bs = args.batch_size
    naive_fn = lambda: score_yes_no(model, processor, flat_imgs, flat_qs, batch_size=bs)  # noqa: E731
    shared_fn = lambda: score_yes_no_shared(model, processor, images, per_image, batch_size=bs)  # noqa: E731
    score_yes_no(model, processor, flat_imgs[:bs], flat_qs[:bs], batch_size=bs)  # warm-up
    score_yes_no_shared(model, processor, images[:1], per_image[:1], batch_size=bs)
    t_naive, t_shared = float("inf"), float("inf")
    for _ in range(args.repeats):
        t, (p_yes, p_no) = timed(naive_fn)
        t_naive = min(t_naive, t)
        t, shared = timed(shared_fn)
        t_shared = min(t_shared, t)
    got = [pair for pairs in shared for pair in pairs]
    diff = max(max(abs(a[0] - y), abs(a[1] - n)) for a, y, n in zip(got, p_yes, p_no))
    logdiff = (torch.tensor(got).log() - torch.tensor([p_yes, p_no]).T.log()).abs().max().item()
    prompt_len = encode_prompt(processor, images[0], flat_qs[0])["input_ids"].shape[1]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print(f"model: idefics3 {CFG.image_seq_len} image tokens/image, text {CFG.text_hidden}x{CFG.text_layers}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params; example prompt {prompt_len} tokens")
    ok = diff < 1e-4 and logdiff < 1e-3
    print(f"p_yes range {min(p_yes):.2e}..{max(p_yes):.2e}; max |p_naive - p_shared| = {diff:.2e} (< 1e-4), "
          f"max |log p_naive - log p_shared| = {logdiff:.2e} (< 1e-3): {'OK' if ok else 'MISMATCH'}")
    print("| images x questions | batch | threads | naive s | shared-prefix s | speed-up | max abs diff p | max abs diff log p |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.images} x {args.questions} | {bs} | {args.threads} | {t_naive:.2f} | {t_shared:.2f} | "
          f"{t_naive / t_shared:.1f}x | {diff:.1e} | {logdiff:.1e} |")
    if not ok:
        raise SystemExit("shared-prefix scores differ from the naive ones")


if __name__ == "__main__":
    main()
