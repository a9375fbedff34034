"""Combine claim verdicts into response scores, pair responses, balance lengths.

RLAIF-V (Yu et al., CVPR 2025), Sec. 3.2 "combine" and the reference code
(``utils/pair_construction.py``, ``utils/get_preference_pairs.py``,
``utils/get_pairs_filter_shorten.py``; summarised in ``rlaif-v-method.md`` §1.5-1.6).

Order of operations in :func:`make_pairs` (per prompt, then over all pairs):

1. group the scored candidates by prompt (the reference groups by prompt id and question; here a
   prompt id fixes its question);
2. all C(n, 2) combinations; keep a pair iff its score gap reaches the threshold, the higher
   score is *chosen*, ties are always dropped;
3. drop pairs whose chosen and rejected texts are identical (after ``strip()``, as the
   reference). The reference does this in its separate length pass, *after* the cap; doing it
   before the cap keeps the cap from spending a slot on a pair that is dropped later;
4. keep at most ``max_pairs_per_prompt`` pairs per prompt, a seeded random choice whose seed
   comes from ``cfg.seed`` and the prompt id (sha256), so the result does not depend on the
   order of prompts or of candidates (the reference samples unseeded);
5. length balancing over ALL remaining pairs, a separate pass after pairing as in the reference:
   the shortening ratio r that best equalises mean chosen / rejected lengths is chosen and
   applied, so a prompt may end with fewer pairs than the cap.

Candidates that cannot be scored (no claims, or a count of judged questions that differs from
the count of claims) are returned as ``mismatches`` by the scorers and never pair; the reference
silently truncated claim and question lists to the shorter one (``rlaif-v-method.md`` §7).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from typing import Any, Literal, Mapping, Sequence

from ..config import ConfigError
from ..records import Candidate, Claim, ClaimScore, Prompt, PreferencePair, RecordError, ScoredCandidate

Mismatch = tuple[str, str]
"""(candidate_id, reason) of a candidate that does not pair."""

#: r in {0, 0.02, ..., 0.98} as exact fractions (the reference's ``np.arange(0, 1, 0.02)``);
#: exact arithmetic makes "first minimum wins" independent of float rounding.
LENGTH_RATIOS: tuple[Fraction, ...] = tuple(Fraction(i, 50) for i in range(50))


@dataclass
class PairsConfig:
    """Settings of the pairs stage (defaults = the reference implementation).

    ``max_pairs_per_prompt``: at most this many pairs per prompt (reference: 2; ``None`` keeps all).
    ``min_score_gap``: claims scoring keeps a pair iff |score gap| >= this (reference: 1).
    ``length_balance``: run the length-balancing pass (``get_pairs_filter_shorten.py``).
    ``seed``: with the prompt id, seeds the per-prompt choice of pairs under the cap.
    ``keep_support`` (not in the paper; off by default): with claims scoring, drop a pair whose
    chosen answer has fewer *accepted* claims than the rejected one, i.e. wins only by saying
    less. -#rejected rewards omission; the reference counters that with length balancing,
    which also drops pairs whose chosen answer is shorter because it left a hallucination out
    (in the sandbox, most object-hallucination pairs). This filter uses the claim verdicts the
    method already has, and is used with ``length_balance: false`` (RESULTS.md).
    ``scoring``: "claims" (divide-and-conquer, the method) or "holistic" (the ablation baseline:
    one yes/no question on the whole answer; there any non-zero gap pairs and
    ``min_score_gap`` is not used).
    """

    max_pairs_per_prompt: int | None = 2
    min_score_gap: float = 1.0
    length_balance: bool = True
    keep_support: bool = False
    seed: int = 0
    scoring: Literal["claims", "holistic"] = "claims"

    def __post_init__(self) -> None:
        """Refuse settings that cannot mean anything (ConfigError names the key)."""
        if self.scoring not in ("claims", "holistic"):
            raise ConfigError(f"pairs.scoring must be 'claims' or 'holistic', got {self.scoring!r}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ConfigError(f"pairs.max_pairs_per_prompt must be >= 1 or null, got {self.max_pairs_per_prompt}")
        if not self.min_score_gap > 0:
            raise ConfigError(f"pairs.min_score_gap must be > 0 (ties never pair), got {self.min_score_gap}")


# ----------------------------------------------------------------------------- scoring


def _judged_by_candidate(scores_by_claim: Mapping[str, ClaimScore]) -> dict[str, set[str]]:
    """Claim ids that have a verdict, grouped by candidate id (claim id = ``candidate/i``)."""
    judged: dict[str, set[str]] = defaultdict(set)
    for claim_id in scores_by_claim:
        judged[claim_id.rpartition("/")[0]].add(claim_id)
    return judged


def _mismatch_reason(candidate_id: str, claims: Sequence[Claim], judged: set[str]) -> str | None:
    """Why a candidate cannot be scored, or None.

    The reference drops a response whose number of judged questions differs from its number
    of claims (``pair_construction.py``), and never pairs a response without claims.
    """
    if not claims:
        return "no claims"
    foreign = [c.id for c in claims if c.candidate_id != candidate_id]
    if foreign:
        return f"claims {foreign} belong to another candidate"
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        return f"duplicate claim ids among {ids}"
    missing = [i for i in ids if i not in judged]
    extra = sorted(judged - set(ids))
    if not missing and not extra:
        return None
    details = ([f"no verdict for {missing}"] if missing else []) + ([f"verdicts for unknown claims {extra}"] if extra else [])
    return f"{len(ids)} claims but {len(judged)} judged questions ({'; '.join(details)})"


def score_candidates(candidates: Sequence[Candidate], claims_by_candidate: Mapping[str, Sequence[Claim]],
                     scores_by_claim: Mapping[str, ClaimScore]) -> tuple[list[ScoredCandidate], list[Mismatch]]:
    """Divide-and-conquer scores: score = -(number of rejected claims) (paper Eq. 1, Sec. 3.2).

    A claim is rejected iff ``p_no >= p_yes`` (an exact tie rejects; ``ClaimScore.accepted``).
    Returns ``(scored, mismatches)``: a candidate without claims, or whose judged questions do
    not match its claims one to one, goes to ``mismatches`` with the reason and is not scored.
    """
    judged = _judged_by_candidate(scores_by_claim)
    scored: list[ScoredCandidate] = []
    mismatches: list[Mismatch] = []
    for cand in candidates:
        claims = sorted(claims_by_candidate.get(cand.id, ()), key=lambda c: c.claim_index)
        reason = _mismatch_reason(cand.id, claims, judged.get(cand.id, set()))
        if reason is not None:
            mismatches.append((cand.id, reason))
            continue
        rejected = [not scores_by_claim[c.id].accepted for c in claims]
        scored.append(ScoredCandidate(candidate_id=cand.id, prompt_id=cand.prompt_id, text=cand.text,
                                      claims=[c.text for c in claims], rejected=rejected,
                                      score=float(-sum(rejected))))
    return scored, mismatches


def holistic_question(question: str, answer: str) -> str:
    """One yes/no question on the whole answer: the "holistic" labeling of the ablation.

    The paper compares divide-and-conquer labels with asking the labeler about the whole
    response at once (human agreement 96.7% vs 66.7%, ``rlaif-v-method.md`` §5). The question
    keeps the claims' "Please answer yes or no." ending so the same yes/no reader applies.
    """
    answer = " ".join(answer.split())
    asked = " ".join(question.split())
    context = f'Here is a question about the image: "{asked}"\n' if asked else ""
    return (f'{context}Here is an answer describing the image: "{answer}"\n'
            "Is this answer accurate for the image? Please answer yes or no.")


def score_holistic(candidates: Sequence[Candidate],
                   scores_by_candidate: Mapping[str, ClaimScore]) -> tuple[list[ScoredCandidate], list[Mismatch]]:
    """Holistic baseline scores: score = p_yes - p_no of :func:`holistic_question` (ties rare).

    Pairs are then formed with any non-zero gap (``PairsConfig(scoring="holistic")``): the
    ablation baseline of the paper's "divide-and-conquer vs holistic" comparison. Returns
    ``(scored, mismatches)`` like :func:`score_candidates` (reasons: "empty answer",
    "no holistic score").
    """
    scored: list[ScoredCandidate] = []
    mismatches: list[Mismatch] = []
    for cand in candidates:
        verdict = scores_by_candidate.get(cand.id)
        if not cand.text.strip():
            mismatches.append((cand.id, "empty answer"))
        elif verdict is None:
            mismatches.append((cand.id, "no holistic score"))
        else:
            scored.append(ScoredCandidate(candidate_id=cand.id, prompt_id=cand.prompt_id, text=cand.text,
                                          claims=[verdict.question], rejected=[not verdict.accepted],
                                          score=float(verdict.p_yes - verdict.p_no)))
    return scored, mismatches


# ----------------------------------------------------------------------------- pairing


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders ``p#2`` before ``p#10``."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text)]


def prompt_seed(seed: int, prompt_id: str) -> int:
    """Stable per-prompt RNG seed (sha256, not Python's per-process salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{prompt_id}".encode("utf-8")).digest()[:8], "big")


def _group(scored: Sequence[ScoredCandidate], prompts: Mapping[str, Prompt]) -> dict[str, list[ScoredCandidate]]:
    """Candidates per prompt (prompts in first-seen order, candidates in natural id order)."""
    groups: dict[str, list[ScoredCandidate]] = {}
    seen: set[str] = set()
    for sc in scored:
        if sc.prompt_id not in prompts:
            raise RecordError(f"scored candidate {sc.candidate_id!r}: prompt {sc.prompt_id!r} is not in prompts")
        if sc.candidate_id in seen:
            raise RecordError(f"scored candidate {sc.candidate_id!r} appears twice")
        seen.add(sc.candidate_id)
        groups.setdefault(sc.prompt_id, []).append(sc)
    for group in groups.values():
        group.sort(key=lambda sc: _natural_key(sc.candidate_id))
    return groups


def _enumerate(group: Sequence[ScoredCandidate], cfg: PairsConfig,
               counts: dict[str, int]) -> list[tuple[ScoredCandidate, ScoredCandidate]]:
    """All C(n,2) combinations passing the gap rule, as (chosen, rejected), minus identical texts.

    Claims scoring: keep iff |gap| >= min_score_gap (``get_preference_pairs.py``: gap >= 1);
    holistic: keep iff gap != 0. Ties always drop. Identical texts drop as in
    ``get_pairs_filter_shorten.py`` (``chosen.strip() == rejected.strip()``).
    """
    out = []
    for a, b in combinations(group, 2):
        counts["combinations"] += 1
        gap = a.score - b.score
        if gap == 0:
            counts["dropped_tie"] += 1
            continue
        if cfg.scoring == "claims" and abs(gap) < cfg.min_score_gap:
            counts["dropped_gap"] += 1
            continue
        chosen, rejected = (a, b) if gap > 0 else (b, a)
        if chosen.text.strip() == rejected.text.strip():
            counts["dropped_identical"] += 1
            continue
        if cfg.keep_support and cfg.scoring == "claims" and _accepted(chosen) < _accepted(rejected):
            counts["dropped_less_support"] += 1
            continue
        out.append((chosen, rejected))
    return out


def _accepted(sc: ScoredCandidate) -> int:
    """Number of the candidate's claims the labeler accepted."""
    return len(sc.rejected) - sum(sc.rejected)


def _cap(pairs: list[Any], prompt_id: str, cfg: PairsConfig) -> list[Any]:
    """At most ``max_pairs_per_prompt`` pairs, a seeded random choice kept in enumeration order.

    Reference (``get_preference_pairs.py``): at most 2 pairs per prompt, chosen at random,
    all kept if fewer exist.
    """
    k = cfg.max_pairs_per_prompt
    if k is None or len(pairs) <= k:
        return list(pairs)
    rng = random.Random(prompt_seed(cfg.seed, prompt_id))
    return [pairs[i] for i in sorted(rng.sample(range(len(pairs)), k))]


def _to_pair(chosen: ScoredCandidate, rejected: ScoredCandidate, prompt: Prompt, cfg: PairsConfig) -> PreferencePair:
    """A PreferencePair with its provenance (scores, claim counts, config; r is added later)."""
    provenance = {
        "scoring": cfg.scoring,
        "chosen_score": chosen.score, "rejected_score": rejected.score,
        "score_gap": chosen.score - rejected.score,
        "chosen_n_claims": len(chosen.claims), "chosen_n_rejected_claims": sum(chosen.rejected),
        "rejected_n_claims": len(rejected.claims), "rejected_n_rejected_claims": sum(rejected.rejected),
        "length_balance_r": None,
        "config": dataclasses.asdict(cfg),
    }
    return PreferencePair(prompt_id=prompt.prompt_id, question=prompt.question, image=prompt.image,
                          chosen=chosen.text, rejected=rejected.text, chosen_id=chosen.candidate_id,
                          rejected_id=rejected.candidate_id, chosen_score=chosen.score,
                          rejected_score=rejected.score, provenance=provenance)


# ----------------------------------------------------------------------------- length balancing


def word_count(text: str) -> int:
    """Length as in the reference: whitespace word count (``len(text.split())``)."""
    return len(text.split())


def shorten_ratio(len_chosen: int, len_rejected: int) -> Fraction:
    """(len_rejected - len_chosen) / len_rejected: how much shorter the chosen answer is.

    An empty rejected answer gives 0 (the chosen one cannot be shorter); the reference would
    divide by zero.
    """
    return Fraction(len_rejected - len_chosen, len_rejected) if len_rejected else Fraction(0)


def choose_length_ratio(lengths: Sequence[tuple[int, int]]) -> Fraction | None:
    """The r of ``get_pairs_filter_shorten.py`` for (len_chosen, len_rejected) pairs.

    For r in {0, 0.02, ..., 0.98}: keep pairs with shorten_ratio <= r and compute
    |mean len_chosen - mean len_rejected| / mean len_rejected (= |sum_c - sum_r| / sum_r over the
    kept pairs); the first r with the minimum wins. An r that keeps no pair (or only empty
    rejected answers) is skipped (the reference divides by zero there). None if no r qualifies.
    """
    ratios = [shorten_ratio(c, r) for c, r in lengths]
    best: tuple[Fraction, Fraction] | None = None
    for r in LENGTH_RATIOS:
        kept = [lens for lens, ratio in zip(lengths, ratios) if ratio <= r]
        sum_rejected = sum(rej for _, rej in kept)
        if not kept or sum_rejected == 0:
            continue
        objective = Fraction(abs(sum(c for c, _ in kept) - sum_rejected), sum_rejected)
        if best is None or objective < best[0]:
            best = (objective, r)
    return None if best is None else best[1]


def balance_lengths(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], float | None]:
    """Apply the chosen r to all pairs (one pass over the whole set, as in the reference).

    Returns the kept pairs (their ``provenance["length_balance_r"]`` set) and r (None when no
    r qualifies: then nothing is dropped).
    """
    lengths = [(word_count(p.chosen), word_count(p.rejected)) for p in pairs]
    r = choose_length_ratio(lengths)
    if r is None:
        return list(pairs), None
    kept = [p for p, (c, j) in zip(pairs, lengths) if shorten_ratio(c, j) <= r]
    for p in kept:
        p.provenance["length_balance_r"] = float(r)
    return kept, float(r)


def _mean_lengths(pairs: Sequence[PreferencePair]) -> tuple[float | None, float | None]:
    """Mean word counts of chosen and rejected answers (None, None for no pairs)."""
    if not pairs:
        return None, None
    n = len(pairs)
    return (sum(word_count(p.chosen) for p in pairs) / n, sum(word_count(p.rejected) for p in pairs) / n)


# ----------------------------------------------------------------------------- the stage


def make_pairs(scored: Sequence[ScoredCandidate], prompts: Mapping[str, Prompt], cfg: PairsConfig | None = None,
               mismatches: Sequence[Mismatch] | None = None) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Preference pairs from scored candidates (see the module docstring for the order of steps).

    ``mismatches`` (from the scorer) only feed the counts. Stats keys: scoring, candidates,
    unpairable (of which unpairable_no_claims: answers divide left without claims), pairable,
    prompts, combinations, dropped_tie, dropped_gap, dropped_identical,
    pairs_before_cap, pairs_after_cap, pairs_after_balance, prompts_with_pairs,
    length_balance_r, mean_len_{chosen,rejected}_{before,after} (before = after the cap,
    before balancing), diagnosis (why there are 0 pairs, else None).
    """
    cfg = cfg or PairsConfig()
    groups = _group(scored, prompts)
    counts = {"combinations": 0, "dropped_tie": 0, "dropped_gap": 0, "dropped_identical": 0, "dropped_less_support": 0}
    before_cap = after_cap = 0
    pairs: list[PreferencePair] = []
    for prompt_id, group in groups.items():
        found = _enumerate(group, cfg, counts)
        capped = _cap(found, prompt_id, cfg)
        before_cap, after_cap = before_cap + len(found), after_cap + len(capped)
        pairs += [_to_pair(c, r, prompts[prompt_id], cfg) for c, r in capped]
    mean_c0, mean_r0 = _mean_lengths(pairs)
    r: float | None = None
    if cfg.length_balance:
        pairs, r = balance_lengths(pairs)
    mean_c1, mean_r1 = _mean_lengths(pairs)
    stats: dict[str, Any] = {
        "scoring": cfg.scoring, "min_score_gap": cfg.min_score_gap,
        "candidates": len(scored) + len(mismatches or ()), "unpairable": len(mismatches or ()),
        "unpairable_no_claims": sum(1 for _, why in mismatches or () if why == "no claims"),  # 0-claim answers never pair
        "pairable": len(scored), "prompts": len(groups), **counts,
        "pairs_before_cap": before_cap, "pairs_after_cap": after_cap, "pairs_after_balance": len(pairs),
        "prompts_with_pairs": len({p.prompt_id for p in pairs}), "length_balance_r": r,
        "mean_len_chosen_before": mean_c0, "mean_len_rejected_before": mean_r0,
        "mean_len_chosen_after": mean_c1, "mean_len_rejected_after": mean_r1,
    }
    stats["diagnosis"] = explain_no_pairs(stats, scored, mismatches or ()) if not pairs else None
    return pairs, stats


def explain_no_pairs(stats: Mapping[str, Any], scored: Sequence[ScoredCandidate], mismatches: Sequence[Mismatch] = ()) -> str:
    """One sentence saying why a run ended with 0 pairs (from ``make_pairs``'s counts)."""
    if stats["candidates"] == 0:
        return "no candidates reached the pairs stage (sampling produced none, or every input was rejected)"
    if stats["pairable"] == 0:
        reasons = sorted({r for _, r in mismatches})[:3]
        return f"none of the {stats['candidates']} candidates could be scored ({'; '.join(reasons)})"
    if stats["combinations"] == 0:
        return f"no prompt has two scored candidates ({stats['pairable']} candidates over {stats['prompts']} prompts); sample n >= 2"
    claims = sum(len(sc.rejected) for sc in scored)
    rejected = sum(sum(sc.rejected) for sc in scored)
    verdicts = (f"every claim accepted ({claims} claims)" if rejected == 0 else
                f"every claim rejected ({claims} claims)" if rejected == claims else f"{rejected} of {claims} claims rejected")
    n = stats["combinations"]
    if stats["dropped_tie"] == n:
        return f"all {n} candidate combinations tied: {verdicts}"
    if stats["dropped_tie"] + stats["dropped_gap"] == n:
        return (f"no candidate combination reached the score gap {stats['min_score_gap']} "
                f"({stats['dropped_tie']} tied, {stats['dropped_gap']} below the gap of {n}; {verdicts})")
    if stats["pairs_before_cap"] == 0:
        return (f"every combination with a score gap was dropped: {stats['dropped_identical']} identical texts, "
                f"{stats['dropped_less_support']} with less support (keep_support)")
    return f"length balancing (r = {stats['length_balance_r']}) removed all {stats['pairs_after_cap']} pairs"
