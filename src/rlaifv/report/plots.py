"""The report's figures (matplotlib, Agg backend), saved as PNG beside the HTML page.

One function per figure, each taking the plain lists of ``RunView.plot_data``; a figure
without data is not drawn and :func:`write_plots` says which were left out and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

POINTS = (("before_cap", "passing the gap"), ("after_cap", "after the cap"), ("final", "kept (after balancing)"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def pair_gaps(data: dict[str, Any], path: Path) -> Path | None:
    """Score gap (chosen - rejected) of the pairs at the three points of the pairs stage."""
    gaps = data.get("gaps") or {}
    if not any(gaps.get(k) for k, _ in POINTS):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), sharex=True)
    for ax, (key, label) in zip(axes, POINTS):
        xs = gaps.get(key) or []
        ax.hist(xs, bins=min(30, max(1, len(set(xs)))), color="#4a78b5")
        ax.set_title(f"{label} ({len(xs)})", fontsize=9)
        ax.set_xlabel("score gap (chosen - rejected)")
    axes[0].set_ylabel("pairs")
    return _save(fig, path)


def pair_lengths(data: dict[str, Any], path: Path) -> Path | None:
    """Answer length (words) of chosen vs rejected answers at the three points (length balancing's effect)."""
    lengths = data.get("lengths") or {}
    if not any(lengths.get(k) and lengths[k][0] for k, _ in POINTS):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), sharex=True)
    for ax, (key, label) in zip(axes, POINTS):
        chosen, rejected = (lengths.get(key) or [[], []])
        both = chosen + rejected
        bins = 20 if both and max(both) > min(both) else 1
        ax.hist([chosen, rejected], bins=bins, label=["chosen", "rejected"], color=["#2e7d32", "#c62828"])
        mean = (lambda v: sum(v) / len(v) if v else float("nan"))
        ax.set_title(f"{label}: mean {mean(chosen):.1f} vs {mean(rejected):.1f} words", fontsize=9)
        ax.set_xlabel("words")
    axes[0].set_ylabel("answers")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def claims_per_answer(data: dict[str, Any], path: Path) -> Path | None:
    xs = data.get("claims_per_answer") or []
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(xs, bins=range(0, max(xs) + 2), align="left", color="#6a5acd", rwidth=0.85)
    ax.set_xlabel("claims per answer")
    ax.set_ylabel("answers")
    ax.set_title(f"claims per answer (mean {sum(xs) / len(xs):.2f})", fontsize=9)
    return _save(fig, path)


def labeler_mass(data: dict[str, Any], path: Path) -> Path | None:
    """The labeler's yes+no probability mass per question (low mass: verdicts close to noise)."""
    xs = data.get("mass") or []
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(xs, bins=40, range=(0, 1.0001), color="#ef8f00")
    ax.axvline(data.get("mass_threshold", 0.5), color="k", ls="--", lw=1, label="warning threshold")
    mode = data.get("mass_mode")
    note = f" ({mode} mode: p_yes/p_no are 0/1)" if mode and mode != "direct" else ""
    ax.set_title(f"labeler yes+no mass per question{note}", fontsize=9)
    ax.set_xlabel("p_yes + p_no")
    ax.set_ylabel("questions")
    ax.legend(fontsize=8)
    return _save(fig, path)


def iterate_curves(data: dict[str, Any], path: Path) -> Path | None:
    """Per iteration: the report metrics (left) and the feedback's own numbers with the sandbox
    ground truth where there is one (right: labeler precision / recall, sampled answers' CHAIR_i)."""
    rows, fb, truth = data.get("rows") or [], data.get("feedback") or [], data.get("truth") or []
    if not rows and not fb:
        return None
    from .loops import CURVES

    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    xs = [r.get("iteration") for r in rows]
    for key, label in CURVES:
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            left.plot(xs, [float("nan") if y is None else y for y in ys], "o-", label=label)
    left.set_xlabel("iteration (0 = starting policy)")
    left.set_xticks([x for x in xs if x is not None])
    left.set_title("held-out evaluation per iteration", fontsize=9)
    if left.lines:
        left.legend(fontsize=8)
    its = [r["iteration"] for r in fb]
    right.plot(its, [r["rejection_rate"] for r in fb], "s-", label="claims rejected by the labeler")
    for key, label in (("chair_i", "truth: sampled answers' CHAIR_i"), ("precision", "truth: labeler rejection precision"),
                       ("recall", "truth: labeler rejection recall")):
        if truth:
            right.plot([t["iteration"] for t in truth], [float("nan") if t.get(key) is None else t[key] for t in truth], "^--", label=label)
    right.set_ylim(0, 1.05)
    right.set_xticks(its)
    right.set_xlabel("iteration")
    right.set_title("the feedback of each iteration", fontsize=9)
    right.legend(fontsize=7, loc="center right")
    return _save(fig, path)


def chosen_index(data: dict[str, Any], path: Path) -> Path | None:
    xs = data.get("chosen_index") or []
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(xs, bins=range(0, max(xs) + 2), align="left", rwidth=0.85, color="#4a78b5")
    ax.set_xlabel("chosen candidate (sample index)")
    ax.set_ylabel("prompts")
    ax.set_title("which candidate best-of-n chose", fontsize=9)
    return _save(fig, path)


FIGURES: dict[str, tuple[str, Callable[[dict[str, Any], Path], Path | None]]] = {
    "iterate_curves": ("per-iteration curves", iterate_curves),
    "pair_gaps": ("score gap of the pairs: before the cap, after it, kept after length balancing", pair_gaps),
    "pair_lengths": ("length of chosen vs rejected answers at the same three points", pair_lengths),
    "claims_per_answer": ("claims per answer", claims_per_answer),
    "labeler_mass": ("the labeler's yes+no probability mass", labeler_mass),
    "chosen_index": ("best-of-n: the chosen candidate", chosen_index),
}

#: which figures each run kind draws
BY_KIND = {"feedback": ("pair_gaps", "pair_lengths", "claims_per_answer", "labeler_mass"),
           "iterate": ("iterate_curves", "pair_gaps", "pair_lengths", "claims_per_answer", "labeler_mass"),
           "best-of-n": ("chosen_index",)}


def write_plots(kind: str, data: dict[str, Any], folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Draw the run kind's figures into ``folder``: ([(caption, png path)], [captions left out: no data])."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn, skipped = [], []
    for name in BY_KIND[kind]:
        caption, fn = FIGURES[name]
        path = fn(data, folder / f"{name}.png")
        if path is None:
            (folder / f"{name}.png").unlink(missing_ok=True)  # no stale figure from an earlier report
            skipped.append(caption)
        else:
            drawn.append((caption, path))
    return drawn, skipped
