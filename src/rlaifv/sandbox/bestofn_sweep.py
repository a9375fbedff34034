"""Best-of-N sweep on the sandbox: how CHAIR and recall move with N, per scorer.

For each sampling seed, max(N) candidates per prompt are sampled **once** and scored **once**
by every scorer (``stages/bestofn.py``, one resumable stage folder per seed: ``out/seed-S/``).
Because a candidate's seed depends only on (sampling seed, prompt id, index), the first N of
those candidates are exactly the N a run with ``n = N`` would draw; so for every N in
``ns`` the best among the first N candidates is what best-of-N returns at that N (ties: the
lowest index, so N = 1 is candidate 0 for every scorer). The chosen answers are scored against
the scene ground truth with the sandbox CHAIR metrics (``eval/chair.py``: CHAIR_i, CHAIR_s,
object recall, the attribute error rate of mentions of present objects, which CHAIR_i does not
count but a claim-level labeler does, mean answer length in words), then averaged over seeds
(mean and sample standard deviation).

Outputs in ``out``: ``sweep.json`` (per seed and aggregated), ``sweep.md`` (Markdown table),
``sweep.png`` (CHAIR_i and recall vs N, one line per scorer, error bars = std over seeds).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..eval.chair import chair_metrics
from ..eval.report import write_json
from ..records import Prompt
from ..runner import StageInputError, rank_and_world
from ..stages.bestofn import BestOfNConfig, BestOfNResult, load_models, load_prompts, pick_best, run_best_of_n, with_models
from ..store import read_records
from .prompts import scene_of
from .world import Scene

METRICS = ("chair_i", "chair_s", "recall", "attr_error_rate", "avg_length")
METRIC_NAMES = {"chair_i": "CHAIR_i", "chair_s": "CHAIR_s", "recall": "recall", "attr_error_rate": "attr. err", "avg_length": "words"}


def chosen_at(result: BestOfNResult, scorer: str, n: int) -> str:
    """The answer best-of-``n`` returns: the best of the first ``n`` candidates under ``scorer``."""
    if n < 1 or n > len(result.candidates):
        raise ValueError(f"best_of_n {result.prompt_id!r}: N = {n} but {len(result.candidates)} candidates were sampled")
    scores = result.scores(scorer)[:n]
    return result.candidates[pick_best(scores, f"prompt {result.prompt_id!r}")]["text"]


def metrics_by_n(results: Sequence[BestOfNResult], scenes: Sequence[Scene], scorers: Sequence[str], ns: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
    """scorer -> N -> sandbox metrics of the answers chosen among the first N candidates."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for scorer in scorers:
        out[scorer] = {}
        for n in ns:
            m = chair_metrics([chosen_at(r, scorer, n) for r in results], scenes)
            out[scorer][n] = {k: float(m[k]) for k in METRICS}
    return out


def aggregate_seeds(per_seed: dict[int, dict[str, dict[int, dict[str, float]]]]) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """scorer -> N -> metric -> {mean, std} over seeds (sample std; 0 with one seed)."""
    first = next(iter(per_seed.values()))
    agg: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for scorer, by_n in first.items():
        agg[scorer] = {}
        for n in by_n:
            agg[scorer][n] = {}
            for k in METRICS:
                vals = [per_seed[s][scorer][n][k] for s in per_seed]
                agg[scorer][n][k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return agg


def markdown_table(agg: dict[str, dict[int, dict[str, dict[str, float]]]], n_seeds: int) -> str:
    """One row per (scorer, N): mean ± std over seeds of each metric."""
    head = "| scorer | N | " + " | ".join(METRIC_NAMES[k] for k in METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METRICS))]
    for scorer, by_n in agg.items():
        for n, ms in by_n.items():
            cells = [f"{ms[k]['mean']:.3f} ± {ms[k]['std']:.3f}" if k != "avg_length" else f"{ms[k]['mean']:.1f} ± {ms[k]['std']:.1f}" for k in METRICS]
            lines.append(f"| {scorer} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(mean ± sample std over {n_seeds} sampling seed(s))\n"


def plot(agg: dict[str, dict[int, dict[str, dict[str, float]]]], path: Path, title: str) -> Path:
    """CHAIR_i and recall vs N (log2 axis), one line per scorer, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    markers = "osD^v<>"
    for ax, metric in zip(axes, ("chair_i", "recall")):
        for j, (scorer, by_n) in enumerate(agg.items()):
            ns = sorted(by_n)
            dodge = 2 ** (0.04 * (j - (len(agg) - 1) / 2))  # identical lines (e.g. ties at N = 1) stay visible
            ax.errorbar([n * dodge for n in ns], [by_n[n][metric]["mean"] for n in ns], yerr=[by_n[n][metric]["std"] for n in ns],
                        marker=markers[j % len(markers)], capsize=3, label=scorer, alpha=0.85)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (candidates)")
        ax.set_ylabel(METRIC_NAMES[metric])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scenes(prompts: Sequence[Prompt]) -> dict[str, Scene]:
    scenes: dict[str, Scene] = {}
    for p in prompts:
        scene = scene_of(p)
        if scene is None:
            raise StageInputError(f"prompt {p.prompt_id!r} has no sandbox scene in its metadata; the sweep measures CHAIR on sandbox prompts only")
        scenes[p.prompt_id] = scene
    return scenes


def _seed_config(cfg: BestOfNConfig, seed: int) -> BestOfNConfig:
    """The stage config of one seed: max(N) candidates, every sweep scorer computed."""
    scorers = tuple(cfg.sweep.scorers)  # validated by SweepConfig
    return replace(cfg, scorer=scorers[0], also_score=scorers[1:], sample=replace(cfg.sample, n=max(cfg.sweep.ns), seed=seed))


def run_sweep(cfg: BestOfNConfig) -> dict[str, Any]:
    """Sample and score once per seed (resumable), then measure every (scorer, N); writes the outputs."""
    cfg = with_models(cfg)  # a sandbox run: the shipped models unless named
    out = Path(cfg.out)
    prompts, path = load_prompts(cfg)
    scenes = _scenes(prompts)
    ns = sorted(set(cfg.sweep.ns))
    models = None
    per_seed: dict[int, dict[str, dict[int, dict[str, float]]]] = {}
    kept: set[str] | None = None
    results_by_seed: dict[int, dict[str, BestOfNResult]] = {}
    for seed in cfg.sweep.seeds:
        scfg = _seed_config(cfg, seed)
        models = models or load_models(scfg)
        run_best_of_n(scfg, prompts, path, out / f"seed-{seed}", models=models)
        results_by_seed[seed] = {r.prompt_id: r for r in read_records(out / f"seed-{seed}", BestOfNResult)}
        kept = set(results_by_seed[seed]) if kept is None else kept & set(results_by_seed[seed])
    if rank_and_world()[0] != 0:  # several processes: rank 0 measures and writes
        return {}
    ids = [p.prompt_id for p in prompts if p.prompt_id in (kept or set())]
    if not ids:
        raise StageInputError("sweep: no prompt has results for every seed (all rejected?)")
    for seed, by_id in results_by_seed.items():
        per_seed[seed] = metrics_by_n([by_id[i] for i in ids], [scenes[i] for i in ids], cfg.sweep.scorers, ns)
    agg = aggregate_seeds(per_seed)
    report = {"prompts": len(ids), "prompts_rejected": len(prompts) - len(ids), "ns": ns, "seeds": list(cfg.sweep.seeds),
              "models": next(iter(results_by_seed[cfg.sweep.seeds[0]].values())).models, "beta": cfg.beta,
              "aggregate": agg, "per_seed": per_seed}
    write_json(out / "sweep.json", report)
    (out / "sweep.md").write_text(markdown_table(agg, len(per_seed)))
    plot(agg, out / "sweep.png", f"best-of-N on {len(ids)} sandbox prompts, {len(per_seed)} seed(s)")
    return report


def scorer_correlations(out: Path, scorers: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """What each scorer ranks by: within each prompt's candidates, the Pearson correlation of the
    score with the number of hallucinated objects, of present objects mentioned with a wrong
    colour, size or cell (``attr_errors``), of correct objects and of words, averaged
    over prompts (and seeds) where both vary. Reads a finished sweep folder (``seed-*/``)."""
    from ..eval.chair import answer_chair

    prompts = {p.prompt_id: p for p in read_records(out / "prompts" / "prompts.jsonl", Prompt)}
    acc: dict[tuple[str, str], list[float]] = {}
    for seed_dir in sorted(out.glob("seed-*")):
        for r in read_records(seed_dir, BestOfNResult):
            scene = scene_of(prompts[r.prompt_id])
            counts = [answer_chair(c["text"], scene) for c in r.candidates]
            features = {"hallucinated": [len(a.hallucinated) for a in counts], "attr_errors": [len(a.attr_error_shapes) for a in counts],
                        "correct": [len(a.correct) for a in counts],
                        "words": [a.n_words for a in counts]}
            for s in scorers or r.candidates[0]["scores"].keys():
                score = [c["scores"][s] for c in r.candidates]
                for name, values in features.items():
                    if len(set(score)) > 1 and len(set(values)) > 1:
                        acc.setdefault((s, name), []).append(statistics.correlation(score, values))
    table: dict[str, dict[str, float]] = {}
    for (s, name), values in sorted(acc.items()):
        table.setdefault(s, {})[name] = statistics.fmean(values)
    return table


def labeler_audit(out: Path) -> dict[str, Any]:
    """The labeler scorer's claim verdicts against the scene ground truth, over every seed of a
    finished sweep: reject precision / recall (a rejected claim should be false), and the fewest
    false claims any candidate of a prompt has (what the best labeler score can reach)."""
    from .audit import _prf, claim_truth, tally_verdict

    prompts = {p.prompt_id: p for p in read_records(out / "prompts" / "prompts.jsonl", Prompt)}
    n: dict[str, int] = dict.fromkeys(("tp", "fp", "fn", "tn", "unparsable"), 0)
    n_claims = 0
    fewest: dict[int, int] = {}
    for seed_dir in sorted(out.glob("seed-*")):
        for r in read_records(seed_dir, BestOfNResult):
            scene, best = scene_of(prompts[r.prompt_id]), None
            for c in r.candidates:
                truth = [claim_truth(x, scene) for x in c.get("claims") or []]
                n_claims += len(truth)
                for t, rej in zip(truth, c.get("rejected") or []):
                    tally_verdict(n, t, bool(rej))
                n_false = sum(t is False for t in truth)
                best = n_false if best is None else min(best, n_false)
            if best is not None:
                fewest[best] = fewest.get(best, 0) + 1
    return {"claims": n_claims, "unparsable": n["unparsable"], "reject": _prf(n["tp"], n["fp"], n["fn"]),
            "fewest_false_claims_per_prompt": dict(sorted(fewest.items()))}


if __name__ == "__main__":  # python -m rlaifv.sandbox.bestofn_sweep SWEEP_DIR: the correlations as Markdown, the labeler audit
    import sys

    corr = scorer_correlations(Path(sys.argv[1]))
    print("| scorer | vs hallucinated objects | vs wrong attributes | vs correct objects | vs words |\n|---|---|---|---|---|")
    for s, row in corr.items():
        cells = [f"{row.get(k, float('nan')):+.3f}" for k in ("hallucinated", "attr_errors", "correct", "words")]
        print(f"| {s} | " + " | ".join(cells) + " |")
    audit = labeler_audit(Path(sys.argv[1]))
    if audit["claims"]:
        rej = audit["reject"]
        print(f"\nlabeler verdicts vs ground truth ({audit['claims']} claims, {audit['unparsable']} unparsable): "
              f"reject precision {rej['precision']}, recall {rej['recall']}; fewest false claims among a prompt's "
              f"candidates -> prompts (seeds summed): {audit['fewest_false_claims_per_prompt']}")
