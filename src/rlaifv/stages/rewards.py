"""Scoring formulas of best-of-N: the DPO implicit reward and its per-token aggregates.

RLAIF-V Sec. 3.3 (arXiv 2405.17220) ranks N sampled answers by the aligned model's implicit
reward, length-normalised: r(y) = (beta / T) * sum_t [log pi_aligned(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)].
The reference code's reward pipeline (RLAIF-V PR #37, ``reward_computer.py``) computes four
aggregates of the same per-token log-ratio, all offered here so they can be compared on the
same candidates (``bestofn.py`` records each one as a scorer):

* ``rlaifv-reward``: mean over the T answer tokens (the paper's normalisation);
* ``dpo-reward``: the sum (the plain DPO implicit reward, which favours short answers);
* ``reward-min``: the smallest per-token log-ratio (an answer is as good as its worst token);
* ``reward-last``: the log-ratio of the last answer token (the end of turn / EOS).

Every aggregate is multiplied by beta, which never changes a ranking. Sums run in float64.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

#: scorer name -> per-token aggregate of beta * [log pi_aligned - log pi_ref]
REWARD_AGGREGATES = {"rlaifv-reward": "mean", "dpo-reward": "sum", "reward-min": "min", "reward-last": "last"}
REWARD_SCORERS = tuple(REWARD_AGGREGATES)


def check_logps(x: torch.Tensor, what: str) -> None:
    """Raise unless ``x`` is a non-empty 1-D tensor of finite token log-probs."""
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D tensor of token log-probs, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{what}: non-finite token log-prob(s) {x[~torch.isfinite(x)].tolist()[:3]}")


def reward_aggregate(logp_aligned: torch.Tensor, logp_reference: torch.Tensor, beta: float, how: str = "mean") -> float:
    """beta * an aggregate (``mean`` | ``sum`` | ``min`` | ``last``) of the per-token log-ratio of one answer.

    ``logp_*`` are the answer tokens' log-probs [T] (incl. the final end of turn) under the
    aligned model and the reference; ``mean`` is RLAIF-V Sec. 3.3's length-normalised reward.
    """
    check_logps(logp_aligned, "aligned log-probs")
    check_logps(logp_reference, "reference log-probs")
    if logp_aligned.shape != logp_reference.shape:
        raise ValueError(f"aligned and reference log-probs cover different tokens: {tuple(logp_aligned.shape)} vs {tuple(logp_reference.shape)}")
    ratio = logp_aligned.double() - logp_reference.double()
    if how == "mean":
        return beta * float(ratio.sum()) / ratio.numel()
    if how == "sum":
        return beta * float(ratio.sum())
    if how == "min":
        return beta * float(ratio.min())
    if how == "last":
        return beta * float(ratio[-1])
    raise ValueError(f"reward aggregate {how!r}: expected one of mean, sum, min, last")


def implicit_reward(logp_aligned: torch.Tensor, logp_reference: torch.Tensor, beta: float, length_normalised: bool = True) -> float:
    """The DPO implicit reward of one answer from its per-token log-probs [T] under both models.

    RLAIF-V Sec. 3.3 (arXiv 2405.17220): r(y) = (beta / T) * sum_{t=1..T} [log pi_aligned(y_t | x, y_<t)
    - log pi_ref(y_t | x, y_<t)], T = number of answer tokens (incl. EOS). ``length_normalised=False``
    gives the plain DPO reward beta * sum_t [...] (``dpo-reward``). Summed in float64.
    """
    return reward_aggregate(logp_aligned, logp_reference, beta, "mean" if length_normalised else "sum")


def mean_logprob(logp: torch.Tensor) -> float:
    """The ``perplexity`` score: mean token log-prob (= -log perplexity; higher is better)."""
    check_logps(logp, "policy log-probs")
    return float(logp.double().mean())


def labeler_score(rejected: Sequence[bool]) -> float:
    """The feedback engine's response score: -(number of rejected claims) (RLAIF-V Sec. 3.2)."""
    return -float(sum(bool(r) for r in rejected))


def pick_best(scores: Sequence[float], label: str = "best-of-n") -> int:
    """Index of the highest score; ties go to the lowest index. Non-finite scores are errors."""
    if not scores:
        raise ValueError(f"{label}: no candidates to choose from")
    for i, s in enumerate(scores):
        if not math.isfinite(s):
            raise ValueError(f"{label}: candidate {i} has a non-finite score {s}")
    best = 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best]:
            best = i
    return best


def candidate_scores(
    candidate_id: str, scorers: Sequence[str], logps: dict[str, torch.Tensor], rejected: Sequence[bool] | None, beta: float
) -> dict[str, float]:
    """scorer -> score of one candidate from its per-role token log-probs and claim verdicts.

    Raises ``FloatingPointError`` / ``ValueError`` naming the candidate on NaN/inf log-probs or
    missing inputs.
    """
    out: dict[str, float] = {}
    try:
        for name in scorers:
            if name in REWARD_AGGREGATES:
                out[name] = reward_aggregate(logps["aligned"], logps["reference"], beta, REWARD_AGGREGATES[name])
            elif name == "perplexity":
                out[name] = mean_logprob(logps["policy"])
            elif rejected is not None:
                out[name] = labeler_score(rejected)
            else:
                raise ValueError("no claim verdicts for the labeler scorer")
    except KeyError as e:
        raise ValueError(f"candidate {candidate_id!r}: no log-probs of the {e.args[0]} model") from e
    except (ValueError, FloatingPointError) as e:
        raise type(e)(f"candidate {candidate_id!r}: {e}") from e
    return out
