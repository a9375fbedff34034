"""GPU smoke test: every stage with ``--backend hf`` and ``--backend vllm`` on a 0.5 B VLM built from config.

Run: ``bench/gpu_smoke.sh [--work runs/gpu_smoke] [--dry-run]`` on a machine with one CUDA GPU,
vLLM (``pip install rlaifv[vllm]``) and this package. Nothing is downloaded (HF_HUB_OFFLINE=1):
the model is a LLaVA-1.5-shaped VLM built from config with a local tokenizer
(``bench/gpu_smoke_model.py``), the prompts are crops of matplotlib's bundled photo.

What runs, each as the ``rlaifv`` command a user types (one process each, so each backend has the
GPU to itself): per backend, sample -> divide -> ask -> conquer -> pairs; then DPO training once
(LoRA, bf16 weights and bf16 autocast, gradient checkpointing, ``--max-steps``, the last two
checkpoints kept; merged checkpoints, which vLLM can load); then best-of-N per backend with the trained checkpoint as the aligned model. A random
model rarely yields preference pairs: if the ``hf`` run has none, pairs are made from
hand-written verdicts (candidate #0 accepted, the others rejected), said in the table. Then
``gpu_smoke_model.py probe`` runs per backend and the two are compared: greedy answers equal,
p_yes / p_no within ``TOL_P`` where vLLM returned every yes/no id (else the hf value inside
vLLM's bounds), answer log-probs within ``TOL_LOGP`` per token.

Output: one table (stage / backend / seconds / check), also in ``WORK/smoke.md`` and
``smoke.json``; exit 0 when every command ran and every check passed. Each run starts from
fresh stage folders (timings never come from a resumed stage); the built model is kept. Without CUDA it exits
with one line and runs nothing. ``--dry-run`` prints the commands and the config files (the
values in braces are decided at run time); ``tests/test_gpu_smoke_plan.py`` runs it on the
CPU and checks every flag against ``rlaifv <cmd> --help`` and every config file against its
config class. ``--device cpu --backends hf --tiny`` rehearses the driver on the CPU (same
architecture, tiny widths; not the smoke test).

Not run yet (no GPU where it was written); assumed: a vLLM release that runs with the
transformers this package needs (the model folder is saved by transformers 5; the processor is
``LlavaProcessor`` with ``CLIPImageProcessorPil``) and supports float32 for LLaVA (else
``--dtype bfloat16``: the tolerances widen to 2e-2 / 1e-1); the 10-minute budget of issue 14 is
not measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("hf", "vllm")
TOL_P = {"float32": 2e-3}  # |p_hf - p_vllm| (other dtypes: 2e-2)
TOL_LOGP = {"float32": 1e-2}  # per answer token, nats (other dtypes: 1e-1)


@dataclass
class Step:
    """One command of the smoke run."""

    stage: str  # the table's stage name
    backend: str  # hf | vllm | - (backend-independent)
    argv: list[str]  # the command; "{pairs}" / "{checkpoint}" are filled in at run time
    cli: str | None = None  # the rlaifv subcommand (its --help lists the flags); None: a python script
    out: str | None = None  # the folder whose records the check counts
    record: str | None = None  # record class name in rlaifv.records (for counting)


def rlaifv_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "rlaifv"
    return [str(exe)] if exe.exists() else [shutil.which("rlaifv") or "rlaifv"]


def config_files(work: Path, args) -> dict[str, tuple[str, dict]]:
    """File name (under ``work``) -> (config class ``module:Name``, YAML data) written before the run."""
    from rlaifv.backends.base import VLLMOptions

    vllm = {"dtype": args.dtype, "gpu_memory_utilization": args.gpu_share}
    if "enforce_eager" in getattr(VLLMOptions, "__dataclass_fields__", {}):
        vllm["enforce_eager"] = True  # no CUDA-graph capture: faster start-up for these small batches
    return {
        "vllm/sample.yaml": ("rlaifv.stages.sample:SampleConfig", {"vllm": vllm}),
        "vllm/conquer.yaml": ("rlaifv.stages.conquer:ConquerConfig", {"vllm": vllm}),
        # the policy (sampling, and the perplexity scorer's answer log-probs) on the backend; aligned / reference on hf
        "hf/bestofn.yaml": ("rlaifv.stages.bestofn:BestOfNConfig", {"also_score": ["perplexity"], "sample": {"backend": "hf"}}),
        "vllm/bestofn.yaml": ("rlaifv.stages.bestofn:BestOfNConfig", {"also_score": ["perplexity"],
                                                                      "sample": {"backend": "vllm", "vllm": vllm}}),
        "pairs.yaml": ("rlaifv.stages.pairs:PairsConfig", {"length_balance": False}),
        "train.yaml": ("rlaifv.training.dpo:DPOConfig", {"batch_size": 2, "lora_r": 8, "lora_alpha": 16, "lr": 1e-4,
                                                         "checkpoints_per_epoch": 1, "merge_lora": True, "progress": False}),
    }


def plan(work: Path, model: Path, prompts: Path, args) -> list[Step]:
    """Every command of the run, in order (pure: nothing is run)."""
    rl, w = rlaifv_cmd(), str(work)
    load = ["--device", args.device, "--dtype", args.dtype]
    steps: list[Step] = []
    for b in args.backends:
        cfg = lambda stage: ["--config", f"{w}/vllm/{stage}.yaml"] if b == "vllm" else []  # noqa: E731
        d = f"{w}/{b}"
        steps += [
            Step("sample", b, rl + ["sample", "--prompts", str(prompts), "--model", str(model), "--n", str(args.n), "--max-new-tokens",
                                    str(args.max_new_tokens), "--seed", "0", "--backend", b, *load, *cfg("sample"), "--out", f"{d}/candidates"],
                 "sample", f"{d}/candidates", "Candidate"),
            Step("divide", b, rl + ["divide", "--candidates", f"{d}/candidates", "--prompts", str(prompts), "--out", f"{d}/claims"],
                 "divide", f"{d}/claims", "Claim"),
            Step("ask", b, rl + ["ask", "--claims", f"{d}/claims", "--out", f"{d}/questions"], "ask", f"{d}/questions", "PolarQuestion"),
            Step("conquer", b, rl + ["conquer", "--questions", f"{d}/questions", "--prompts", str(prompts), "--model", str(model),
                                     "--backend", b, *load, *cfg("conquer"), "--out", f"{d}/scores"], "conquer", f"{d}/scores", "ClaimScore"),
            Step("pairs", b, rl + ["pairs", "--prompts", str(prompts), "--candidates", f"{d}/candidates", "--claims", f"{d}/claims",
                                   "--scores", f"{d}/scores", "--out", f"{d}/pairs"], "pairs", f"{d}/pairs", "PreferencePair"),
        ]
    first = args.backends[0]
    steps.append(Step("pairs (hand verdicts)", "-", rl + ["pairs", "--prompts", str(prompts), "--candidates", f"{w}/{first}/candidates",
                                                         "--claims", f"{w}/{first}/claims", "--scores", f"{w}/hand-scores",
                                                         "--config", f"{w}/pairs.yaml", "--out", f"{w}/hand-pairs"],
                      "pairs", f"{w}/hand-pairs", "PreferencePair"))
    steps.append(Step("train (LoRA, bf16, grad ckpt)", "-", rl + [
        "train", "--pairs", "{pairs}", "--prompts", str(prompts), "--model", str(model), "--finetune", "lora", "--device", args.device,
        "--dtype", "bfloat16", "--mixed-precision", "bf16", "--gradient-checkpointing", "--max-steps", str(args.train_steps),
        "--save-total-limit", "2", "--config", f"{w}/train.yaml",
        "--out", f"{w}/train"], "train", f"{w}/train", "checkpoints"))
    for b in args.backends:
        steps.append(Step("best-of-n", b, rl + ["best-of-n", "--prompts", str(prompts), "--policy", str(model), "--aligned", "{checkpoint}",
                                                "--reference", str(model), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
                                                *load, "--config", f"{w}/{b}/bestofn.yaml", "--out", f"{w}/{b}/bon"],
                          "best-of-n", f"{w}/{b}/bon/results", "BestOfNResult"))
    for b in args.backends:
        steps.append(Step("probe", b, [sys.executable, str(HERE / "gpu_smoke_model.py"), "probe", "--backend", b, "--model", str(model),
                                       "--prompts", str(prompts), "--answers", f"{w}/answers.json", "--out", f"{w}/{b}/probe.json",
                                       "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens), "--gpu-share", str(args.gpu_share),
                                       "--device", args.device]))
    return steps


# ----------------------------------------------------------------------------- running


def count(folder: str | None, record: str | None) -> int | None:
    """Records of type ``record`` (a name in rlaifv.records, BestOfNResult, or "checkpoints") in ``folder``."""
    if not folder or not record or not Path(folder).exists():
        return None
    if record == "checkpoints":
        from rlaifv.training.dpo import list_checkpoints

        return len(list_checkpoints(folder))
    import rlaifv.records as records
    from rlaifv.stages.bestofn import BestOfNResult
    from rlaifv.store import read_records

    cls = BestOfNResult if record == "BestOfNResult" else getattr(records, record)
    return sum(1 for _ in read_records(Path(folder), cls))


def hand_scores(work: Path, first: str) -> None:
    """Verdicts over the run's claims: candidate #0 of each prompt accepted, the others rejected."""
    from rlaifv.records import Claim, ClaimScore
    from rlaifv.store import RecordStore, read_records

    claims = list(read_records(work / first / "claims", Claim))
    with RecordStore(work / "hand-scores", ClaimScore) as store:
        store.write([ClaimScore(c.id, f"Is it true that {c.text}?", *((0.9, 0.1) if c.candidate_id.endswith("#0") else (0.1, 0.9)))
                     for c in claims])


def write_answers(work: Path, first: str, per_prompt: int = 2) -> None:
    """``answers.json``: the first sampled candidates of each prompt, whose log-probs both backends score."""
    from rlaifv.records import Candidate
    from rlaifv.store import read_records

    out: dict[str, list[str]] = {}
    for c in sorted(read_records(work / first / "candidates", Candidate), key=lambda c: (c.prompt_id, c.sample_index)):
        if c.text and len(out.setdefault(c.prompt_id, [])) < per_prompt:
            out[c.prompt_id].append(c.text)
    (work / "answers.json").write_text(json.dumps(out, indent=1))


def run_step(step: Step, env: dict, log: Path) -> tuple[float, bool]:
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shlex.join(step.argv)}\n")
        f.flush()
        rc = subprocess.run(step.argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return round(time.time() - t0, 1), rc == 0


def compare(work: Path, dtype: str) -> list[tuple[str, str, bool]]:
    """(check, detail, passed) rows from the two probes."""
    hf = json.loads((work / "hf" / "probe.json").read_text())
    vl = json.loads((work / "vllm" / "probe.json").read_text())
    tol_p, tol_lp = TOL_P.get(dtype, 2e-2), TOL_LOGP.get(dtype, 1e-1)
    same = [k for k in hf["greedy"] if hf["greedy"][k] == vl["greedy"].get(k)]
    rows = [("greedy answers hf == vllm", f"{len(same)}/{len(hf['greedy'])} prompts identical", len(same) == len(hf["greedy"]))]
    worst, bounded, complete, viol = 0.0, 0, 0, 0
    for pid, qs in hf["yes_no"].items():
        for (hy, hn, _), (vy, vn, outside) in zip(qs, vl["yes_no"][pid]):
            if outside:  # vLLM's value is a lower bound: hf must not be below it
                bounded += 1
                viol += (hy < vy - tol_p) or (hn < vn - tol_p)
            else:
                complete += 1
                worst = max(worst, abs(hy - vy), abs(hn - vn))
    rows.append(("p_yes / p_no hf vs vllm", f"max |diff| {worst:.2e} (tol {tol_p:g}) on {complete} questions; {bounded} with a word "
                 f"outside top-k, {viol} below vLLM's lower bound", worst <= tol_p and viol == 0))
    lp_worst, n_tok, mismatch = 0.0, 0, 0
    for pid, answers in hf["logprobs"].items():
        for a, b in zip(answers, vl["logprobs"].get(pid, [])):
            if len(a) != len(b):
                mismatch += 1
                continue
            n_tok += len(a)
            lp_worst = max([lp_worst] + [abs(x - y) for x, y in zip(a, b)])
    rows.append(("answer log-probs hf vs vllm", f"max |diff| {lp_worst:.2e} nats/token (tol {tol_lp:g}) over {n_tok} tokens; "
                 f"{mismatch} length mismatches", lp_worst <= tol_lp and mismatch == 0 and n_tok > 0))
    rows.append(("vllm counts", json.dumps(vl.get("counts", {}))[:200], True))
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = "| stage | backend | seconds | check |\n|---|---|---|---|\n"
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)


def _check_machine(backends: tuple[str, ...], device: str) -> str | None:
    """One line saying why this machine cannot run the smoke test, or None."""
    import torch

    if device == "cpu" and "vllm" in backends:
        return "gpu_smoke: --device cpu is a rehearsal of the hf path only (--backends hf); vLLM needs CUDA"
    if device != "cpu" and not torch.cuda.is_available():
        return "gpu_smoke: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run. --dry-run prints the commands"
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        return "gpu_smoke: vLLM is not installed (pip install rlaifv[vllm]); or run --backends hf"
    return None


def execute(args, work: Path, steps: list[Step], model: Path, prompts: Path) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = work / "smoke.log"
    rows, ok_all, first, vals = [], True, args.backends[0], {}
    for step in steps:
        if step.stage == "pairs (hand verdicts)":
            if (count(f"{work}/{first}/pairs", "PreferencePair") or 0) > 0:
                vals["pairs"] = f"{work}/{first}/pairs"
                continue
            hand_scores(work, first)
            vals["pairs"] = f"{work}/hand-pairs"
        if step.stage == "probe" and not (work / "answers.json").exists():
            write_answers(work, first)
        if step.stage == "best-of-n" and "checkpoint" not in vals:
            from rlaifv.training.dpo import list_checkpoints

            found = list_checkpoints(work / "train")
            vals["checkpoint"] = str(found[-1]) if found else str(model)
        step.argv = [a.format(**vals) if a in ("{pairs}", "{checkpoint}") else a for a in step.argv]
        secs, ok = run_step(step, env, log)
        n = count(step.out, step.record) if ok else None
        check = ("ok" if ok else f"FAILED (see {log})") + (f", {n} {step.record}" + (" records" if step.record != "checkpoints" else "") if n is not None else "")
        if step.stage == "pairs (hand verdicts)":
            check += " (random model: pairs from hand-written verdicts)"
        rows.append((step.stage, step.backend, str(secs), check))
        ok_all &= ok
        print(f"{step.stage:<30} {step.backend:<5} {secs:>7}s  {check}", flush=True)
    if ok_all and set(BACKENDS) <= set(args.backends):
        for name, detail, passed in compare(work, args.dtype):
            rows.append((name, "hf vs vllm", "-", ("pass: " if passed else "FAIL: ") + detail))
            ok_all &= passed
    text = table(rows)
    (work / "smoke.md").write_text(text)
    (work / "smoke.json").write_text(json.dumps({"rows": rows, "ok": ok_all, "model": str(model), "args": vars(args)}, indent=1, default=str))
    print("\n" + text)
    return 0 if ok_all else 1


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/gpu_smoke"), help="work folder (model, prompts, runs, table)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and config files; run nothing")
    ap.add_argument("--backends", default="hf,vllm", help="comma-separated: hf,vllm")
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32", help="inference dtype of both backends (train always bfloat16)")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--gpu-share", type=float, default=0.5, help="vLLM gpu_memory_utilization (best-of-N also holds two hf models)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to rehearse the driver (--backends hf --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture (rehearsal, not the smoke test)")
    args = ap.parse_args(argv)
    args.backends = tuple(b for b in args.backends.split(",") if b)
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or not args.backends:
        ap.error(f"--backends: expected hf and/or vllm, got {args.backends}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.work.resolve()
    model, prompts = work / "model", work / "data" / "prompts.jsonl"
    steps = plan(work, model, prompts, args)
    files = config_files(work, args)
    if args.dry_run:
        import yaml

        for name, (cls, data) in files.items():
            print(f"# {work / name} ({cls})\n" + yaml.safe_dump(data).rstrip())
        print(f"$ {sys.executable} {HERE / 'gpu_smoke_model.py'} build {model}")
        for s in steps:
            print(f"[{s.stage} / {s.backend}] $ {shlex.join(s.argv)}")
        print("# {pairs}: the first backend's pairs, or hand-pairs when it has none; {checkpoint}: the last train checkpoint")
        return 0
    why = _check_machine(args.backends, args.device)
    if why:
        print(why, file=sys.stderr)
        return 2
    import yaml

    for old in [*args.backends, "hand-scores", "hand-pairs", "train", "answers.json", "smoke.log"]:  # fresh runs (the model is kept)
        path = work / old
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for name, (_, data) in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(yaml.safe_dump(data))
    t0 = time.time()
    sys.path.insert(0, str(HERE))
    from gpu_smoke_model import build_model, write_prompts

    build_model(model, tiny=args.tiny)
    write_prompts(prompts.parent)
    print(f"model and prompts ready in {time.time() - t0:.1f} s ({model})", flush=True)
    return execute(args, work, steps, model, prompts)


if __name__ == "__main__":
    sys.exit(main())
