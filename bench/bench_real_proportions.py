"""Benchmark: conquer, sampling, a DPO step and best-of-N scoring at LLaVA-1.5 proportions, in one run.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_real_proportions.py [--images 2] [--questions 10] [--repeats 3]`.

The model is built from config with LLaVA-1.5's shapes where they set the cost ratios: a CLIP
vision tower at 336 px with 14 px patches (576 image tokens per image, the CLS token dropped as
LLaVA-1.5's "default" feature strategy does; the tower itself is small, 128 x 4 layers, as CLIP-L
is about 5% of LLaVA-1.5-7B's prefill), a 2-layer GELU projector, and a Llama text model of 8
layers x 512 (8 heads, MLP 1376, the 7B's 2.7x ratio), with the real LLaVA-1.5 chat template and
a Llama-2-style SentencePiece tokenizer from the compat zoo (``compat/zoo_llava``; its 1,024-entry
vocabulary keeps the lm head at about the 7B's 2% of a token's work). Weights are random: only
the work is measured; every fast path is also checked against the naive one.

Measured side by side (each repeat runs every way once, alternating; the table shows the median
over ``--repeats`` and ratios of medians):

* conquer, per image ``--questions`` claims as polar questions (sandbox claims, realistic
  length), through ``prefix.score_yes_no_shared`` as the stage calls it: ``naive`` (a full
  forward per question, ``--conquer-batch`` questions per forward), ``batched`` (image + common prefix
  once, the suffixes in batch rows on copies of its KV cache: the shared path before packing),
  ``packed`` (the suffixes in one sequence with a block mask on the one cache), and the
  **lower bound**: per image, ``encode_prefix`` of the image + common prefix, plus ONE plain
  causal batch-1 forward of all the image's question suffixes concatenated, on that cache, with
  the lm head on each suffix's last token. It does the least work any exact method can do
  (the image and prefix once, every suffix token once) but gives wrong scores (suffixes see each
  other); prompt preparation (tokenising, image preprocessing: ``split_prefix``) is outside it
  and inside the three real ways.
* sampling, ``--n-sample`` candidates of ``--new-tokens`` tokens (forced to full length) per
  prompt through ``stages.sample.generate_candidates``: the prompt prefilled once and its cache
  repeated vs the prompt duplicated n times (identical texts checked).
* DPO step (batch ``--dpo-batch`` pairs, full fine-tune, AdamW): the reference log-probs read
  from a cache computed once beforehand (rlaifv's training step) vs a no-grad forward of a
  resident reference model every step; the one-off reference pass is timed separately.
* best-of-N scoring, ``--n-best`` answers of ``--answer-tokens`` tokens (EOS included) per
  prompt through ``models.answers.answer_logprobs``: naive, batched, packed, and its lower
  bound: ``encode_prefix`` of the prompt plus one plain causal forward of all N answers
  concatenated on its cache (logits at every answer token, as scoring needs them).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import time
from typing import Callable

import torch

from rlaifv.compat.zoo import load_template
from rlaifv.compat.zoo_llava import _llama_sp, finish, text_config, vision_dict
from rlaifv.models.answers import answer_logprobs
from rlaifv.models.chat import answer_ids, encode_prompt
from rlaifv.models.prefix import encode_prefix, score_yes_no_shared, split_prefix
from rlaifv.records import PreferencePair
from rlaifv.sandbox.render import render
from rlaifv.sandbox.tasks import YES_NO_SUFFIX, hallucinated_object, object_phrase, place, sentence
from rlaifv.sandbox.world import World
from rlaifv.stages.sample import SampleConfig, candidate_seed, generate_candidates
from rlaifv.training.data import TrainExample
from rlaifv.training.dpo import _pair_logps
from rlaifv.training.losses import dpo_loss
from transformers.cache_utils import DynamicCache

IMAGE, PATCH = 336, 14  # LLaVA-1.5: CLIP ViT-L/14 at 336 px -> 24 x 24 = 576 image tokens


def build_llava15_shapes(seed: int = 0):
    """(model, processor): LLaVA-1.5 proportions (see the module docstring), random weights."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama_sp(["<image>"])
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                                     image_size=IMAGE, patch_size=PATCH)),
        text_config=LlamaConfig(**text_config(tok, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                                              num_key_value_heads=8, max_position_embeddings=4096)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    model = finish(LlavaForConditionalGeneration(config), tok)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=load_template("llava_1_5"))
    return model, processor


# --------------------------------------------------------------------------- lower bounds


def _causal_suffix_forward(model, enc, suffixes: list[list[int]], last_only: bool) -> torch.Tensor:
    """All suffixes concatenated, one plain causal batch-1 forward on a view of the prefix cache."""
    lengths = [len(s) for s in suffixes]
    ids = torch.tensor([t for s in suffixes for t in s])[None]
    positions = (enc.length + enc.rope_delta + torch.arange(ids.shape[1]))[None]
    cache = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in enc.cache.layers])
    kw = {"logits_to_keep": torch.tensor(lengths).cumsum(0) - 1} if last_only else {}
    return model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, **kw).logits


@torch.no_grad()
def conquer_lower_bound(model, prepared: list[tuple[dict, list[list[int]]]]) -> None:
    """Per image: encode_prefix + one causal forward of all its question suffixes (inputs prepared beforehand)."""
    for prefix, suffixes in prepared:
        _causal_suffix_forward(model, encode_prefix(model, prefix), suffixes, last_only=True)


@torch.no_grad()
def bestofn_lower_bound(model, prepared: list[tuple[dict, list[list[int]]]]) -> None:
    """Per prompt: encode_prefix of the prompt + one causal forward of all N answers (every token's log-probs)."""
    for prompt, answers in prepared:
        torch.log_softmax(_causal_suffix_forward(model, encode_prefix(model, prompt), answers, last_only=False).float(), dim=-1)


# --------------------------------------------------------------------------- inputs


def claims(world: World, scenes, per_image: int) -> list[list[str]]:
    """``per_image`` distinct polar questions per scene, each about two objects (true or hallucinated).

    About 20-25 tokens after the common "Is there a", as RLAIF-V's questions about claims of a
    detailed description ("Is the man in the red jacket standing next to the bus? Please answer
    yes or no.") run with the Llama tokenizer.
    """
    rng = random.Random(0)
    out = []
    for s in scenes:
        qs: list[str] = []
        while len(qs) < per_image:
            a, b = (rng.choice(list(s.objects)) if rng.random() < 0.7 else hallucinated_object(s, rng, world.config) for _ in range(2))
            if a is None or b is None:
                continue
            q = f"Is there a {object_phrase(a)} {place(a.cell)} and a {object_phrase(b)} {place(b.cell)} in the image? {YES_NO_SUFFIX}"
            if q not in qs:
                qs.append(q)
        out.append(qs)
    return out


def fixed_length_answers(processor, world: World, scenes, n: int, tokens: int) -> list[list[str]]:
    """Per scene, ``n`` distinct answers of exactly ``tokens`` tokens with EOS.

    Each is a shuffled description of the scene's objects plus a hallucinated one or two (as
    sampled candidates differ), cut to length by tokens.
    """
    rng = random.Random(1)
    tok = processor.tokenizer
    out = []
    for s in scenes:
        texts: list[str] = []
        for _ in range(200 * n):
            if len(texts) == n:
                break
            objs = list(s.objects) + [o for o in (hallucinated_object(s, rng, world.config) for _ in range(rng.randint(1, 2))) if o]
            rng.shuffle(objs)
            ids = tok(" ".join([sentence(o) for o in objs] * 3), add_special_tokens=False)["input_ids"]
            for cut in range(tokens - 1, tokens + 4):
                text = tok.decode(ids[:cut]).strip()
                if len(answer_ids(processor, text)) == tokens and text not in texts:
                    texts.append(text)
                    break
        if len(texts) < n:
            raise SystemExit(f"could not make {n} distinct {tokens}-token answers for scene {s.scene_id}")
        out.append(texts)
    return out


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_ways(ways: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per way (alternating within each repeat) and each way's last result."""
    times: dict[str, list[float]] = {k: [] for k in ways}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for k, fn in ways.items():
            t, results[k] = timed(fn)
            times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}, results


# --------------------------------------------------------------------------- the four jobs

Row = tuple[str, str, float, str, str, str]  # job, way, median s, speed-up vs naive, x lower bound, check


def _rows(job: str, secs: dict[str, float], base: str, bound: str | None, checks: dict[str, str]) -> list[Row]:
    return [(job, k, s, f"{secs[base] / s:.1f}x", f"{s / secs[bound]:.2f}x" if bound else "-", checks.get(k, ""))
            for k, s in secs.items()]


def bench_conquer(model, proc, images, questions, args) -> tuple[list[Row], str]:
    kw = dict(batch_size=args.conquer_batch)
    prepared = [split_prefix(proc, img, qs) for img, qs in zip(images, questions)]
    ways = {m: (lambda m=m: score_yes_no_shared(model, proc, images, questions, mode=m, **kw)) for m in ("naive", "batched", "packed")}
    ways["lower bound"] = lambda: conquer_lower_bound(model, prepared)
    for m in ("naive", "batched", "packed"):  # warm-up
        score_yes_no_shared(model, proc, images[:1], questions[:1], mode=m, **kw)
    secs, res = run_ways(ways, args.repeats)
    naive = torch.tensor([p for ps in res["naive"] for p in ps], dtype=torch.float64)
    checks = {}
    for m in ("batched", "packed"):
        got = torch.tensor([p for ps in res[m] for p in ps], dtype=torch.float64)
        d, dlog = (got - naive).abs().max().item(), (got.log() - naive.log()).abs().max().item()
        if d > 1e-4 or dlog > 1e-3:
            raise SystemExit(f"conquer {m} differs from naive: |dp| {d:.1e}, |d log p| {dlog:.1e}")
        checks[m] = f"max abs dp {d:.0e}, d log p {dlog:.0e}"
    p_len = [pre["input_ids"].shape[1] for pre, _ in prepared]
    s_len = [len(s) for _, ss in prepared for s in ss]
    info = (f"conquer: {len(images)} images x {args.questions} questions; common prefix {min(p_len)}-{max(p_len)} tokens "
            f"(576 image tokens), question suffixes {min(s_len)}-{max(s_len)} tokens (mean {statistics.mean(s_len):.1f})")
    return _rows("conquer", secs, "naive", "lower bound", checks), info


def bench_sampling(model, proc, images, args) -> tuple[list[Row], str]:
    questions = ["Describe the image in detail."] * len(images)
    seeds = [[candidate_seed(0, str(i), k) for k in range(args.n_sample)] for i in range(len(images))]
    model.generation_config.min_new_tokens = args.new_tokens  # both ways decode the same work

    def run(share: bool):
        cfg = SampleConfig(n=args.n_sample, max_new_tokens=args.new_tokens, temperature=1.0, share_prefill=share)
        return generate_candidates(model, proc, images, questions, seeds, cfg)

    try:
        run(True)  # warm-up
        secs, res = run_ways({"duplicated prompt": lambda: run(False), "prefill once": lambda: run(True)}, args.repeats)
    finally:
        model.generation_config.min_new_tokens = None
    if res["duplicated prompt"] != res["prefill once"]:
        raise SystemExit("sampling: prefill-once candidates differ from duplicated-prompt candidates")
    info = f"sampling: {len(images)} prompts x n = {args.n_sample}, {args.new_tokens} new tokens each"
    return _rows("sampling", secs, "duplicated prompt", None, {"prefill once": "identical texts"}), info


def bench_dpo(model, proc, images, answers, args) -> tuple[list[Row], str]:
    q = "Describe the image in detail."
    examples = [TrainExample(PreferencePair(f"p{i}", q, "-", a[0], a[1], f"p{i}#0", f"p{i}#1", 1.0, 0.0), img)
                for i, (img, a) in enumerate(zip(images, answers))]
    t0 = time.perf_counter()
    cache = {}
    for e in examples:
        c, r = answer_logprobs(model, proc, e.image, q, [e.pair.chosen, e.pair.rejected])
        cache[e.pair.id] = (c.sum().item(), r.sum().item())
    one_off = time.perf_counter() - t0
    ref_model = copy.deepcopy(model).eval()
    models = {"reference forward": copy.deepcopy(model), "cached reference": copy.deepcopy(model)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-6) for k, m in models.items()}

    def cached(ex):
        return torch.tensor([cache[e.pair.id][0] for e in ex]), torch.tensor([cache[e.pair.id][1] for e in ex])

    def forward(ex):
        with torch.no_grad():
            c, r, _ = _pair_logps(ref_model, proc, ex)
        return c, r

    fns = {"reference forward": forward, "cached reference": cached}
    batches = [examples[i : i + args.dpo_batch] for i in range(0, len(examples), args.dpo_batch)]
    times: dict[str, list[float]] = {k: [] for k in models}
    first: dict[str, float] = {}
    for b in batches:
        for k, m in models.items():
            t0 = time.perf_counter()
            pc, pr, _ = _pair_logps(m, proc, b)
            rc, rr = fns[k](b)
            loss = dpo_loss(pc, pr, rc, rr).loss
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            times[k].append(time.perf_counter() - t0)
            first.setdefault(k, loss.item())
    if abs(first["cached reference"] - first["reference forward"]) > 1e-4:
        raise SystemExit(f"DPO: first-step losses differ: {first}")
    secs = {k: statistics.median(v[1:] if len(v) > 2 else v) for k, v in times.items()}  # the first step warms up
    info = (f"DPO step: {len(batches)} steps x {args.dpo_batch} pairs ({args.answer_tokens}-token answers); one-off cached "
            f"reference pass {one_off:.2f} s for {len(examples)} pairs (packed shared prefix)")
    return _rows("DPO step", secs, "reference forward", None, {"cached reference": "same first-step loss (< 1e-4)"}), info


def bench_bestofn(model, proc, images, answers, args) -> tuple[list[Row], str]:
    q = "Describe the image in detail."
    prepared = [(encode_prompt(proc, img, q), [answer_ids(proc, a) for a in ans]) for img, ans in zip(images, answers)]
    kw = dict(batch_size=args.score_batch)
    ways = {m: (lambda m=m: [answer_logprobs(model, proc, img, q, ans, mode=m, **kw) for img, ans in zip(images, answers)])
            for m in ("naive", "batched", "packed")}
    ways["lower bound"] = lambda: bestofn_lower_bound(model, prepared)
    for m in ("naive", "batched", "packed"):  # warm-up
        answer_logprobs(model, proc, images[0], q, answers[0][:2], mode=m, **kw)
    secs, res = run_ways(ways, args.repeats)
    checks = {}
    for m in ("batched", "packed"):
        d = max((a - b).abs().max().item() for xs, ys in zip(res[m], res["naive"]) for a, b in zip(xs, ys))
        ds = max(abs(a.sum().item() - b.sum().item()) for xs, ys in zip(res[m], res["naive"]) for a, b in zip(xs, ys))
        if ds > 1e-4 * max(1.0, max(abs(b.sum().item()) for ys in res["naive"] for b in ys)):
            raise SystemExit(f"best-of-N {m} differs from naive: per token {d:.1e}, summed {ds:.1e}")
        checks[m] = f"max per-token d log p {d:.0e}, summed {ds:.0e}"
    p_len = prepared[0][0]["input_ids"].shape[1]
    info = f"best-of-N scoring: {len(images)} prompts x N = {args.n_best} answers of {args.answer_tokens} tokens; prompt {p_len} tokens"
    return _rows("best-of-N scoring", secs, "naive", "lower bound", checks), info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2, help="conquer: images")
    ap.add_argument("--questions", type=int, default=10, help="conquer: questions per image")
    ap.add_argument("--conquer-batch", type=int, default=32, help="conquer naive / batched: questions per forward (the stage's default)")
    ap.add_argument("--score-batch", type=int, default=16, help="best-of-N naive / batched: answers per forward (the stage's default)")
    ap.add_argument("--prompts", type=int, default=2, help="sampling and best-of-N: prompts")
    ap.add_argument("--n-sample", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--n-best", type=int, default=16)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--dpo-batch", type=int, default=2)
    ap.add_argument("--dpo-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=["conquer", "sampling", "dpo", "bestofn"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, proc = build_llava15_shapes()
    world = World()
    scenes = world.scenes(max(args.images, args.prompts, args.dpo_batch * args.dpo_steps), "test")
    images = [render(s, IMAGE) for s in scenes]
    rows: list[Row] = []
    infos: list[str] = []
    jobs = {
        "conquer": lambda: bench_conquer(model, proc, images[: args.images], claims(world, scenes[: args.images], args.questions), args),
        "sampling": lambda: bench_sampling(model, proc, images[: args.prompts], args),
        "dpo": lambda: bench_dpo(model, proc, images[: args.dpo_batch * args.dpo_steps],
                                 fixed_length_answers(proc, world, scenes[: args.dpo_batch * args.dpo_steps], 2, args.answer_tokens), args),
        "bestofn": lambda: bench_bestofn(model, proc, images[: args.prompts],
                                         fixed_length_answers(proc, world, scenes[: args.prompts], args.n_best, args.answer_tokens), args),
    }
    for name in args.only:
        t0 = time.perf_counter()
        r, info = jobs[name]()
        rows += r
        infos.append(f"{info} [{time.perf_counter() - t0:.0f} s]")
        print(infos[-1], flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {args.threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), fp32, median of {args.repeats}")
    print(f"model: LLaVA-1.5 shapes, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"{encode_prompt(proc, images[0], 'x')['input_ids'].eq(model.config.image_token_id).sum().item()} image tokens, "
          "vision 128 x 4 at 336 px / 14, text 8 x 512 (Llama), LLaVA-1.5 chat template\n")
    print("| job | way | median s | speed-up vs naive | x lower bound | check vs naive |")
    print("|---|---|---|---|---|---|")
    for job, way, s, up, lb, check in rows:
        print(f"| {job} | {way} | {s:.2f} | {up} | {lb} | {check} |")


if __name__ == "__main__":
    main()
