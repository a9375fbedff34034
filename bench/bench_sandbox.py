"""Benchmark: sandbox pre-training and evaluation speed and memory on this machine.

Run: `.venv/bin/python bench/bench_sandbox.py [--steps 200] [--scenes 200]`; prints a Markdown
table to paste into BENCHMARKS.md. Each measurement runs in a fresh subprocess so that peak RSS
is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from rlaifv.sandbox.pretrain import preset, pretrain
from rlaifv.sandbox.evaluate import SandboxEvalConfig, evaluate_sandbox
from rlaifv.models.load import load_vlm
what, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
if what == "pretrain":
    cfg = preset("labeler", steps=n, vision_steps=n)
    pretrain(cfg)
    units = 2 * n * cfg.batch_size  # scenes seen: vision stage + instruction stage
else:
    model, proc = load_vlm("sandbox:" + what)
    evaluate_sandbox(model, proc, SandboxEvalConfig(n_scenes=n))
    units = n
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"what": what, "n": n, "seconds": round(dt, 1), "scenes_per_s": round(units / dt, 1), "peak_rss_mb": round(rss)}))
"""


def run(what: str, n: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(n)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--scenes", type=int, default=200)
    args = ap.parse_args()
    rows = [run("pretrain", args.steps), run("policy", args.scenes), run("labeler", args.scenes)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads default")
    print("| measurement | n | wall s | scenes/s | peak RSS MB |\n|---|---|---|---|---|")
    names = {"pretrain": "pretrain (labeler preset, vision + instruction steps each)", "policy": "eval sandbox:policy (describe x2, POPE x3, claims)", "labeler": "eval sandbox:labeler (same)"}
    for r in rows:
        print(f"| {names[r['what']]} | {r['n']} | {r['seconds']} | {r['scenes_per_s']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
