"""Tests for rlaifv.stages.pairs: scores, pair enumeration, cap, length balancing, holistic."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from rlaifv.config import ConfigError
from rlaifv.records import Candidate, Claim, ClaimScore, PreferencePair, Prompt, RecordError, ScoredCandidate
from rlaifv.stages.pairs import (
    PairsConfig,
    balance_lengths,
    choose_length_ratio,
    holistic_question,
    make_pairs,
    score_candidates,
    score_holistic,
    shorten_ratio,
)

NO_CAP_NO_BALANCE = PairsConfig(max_pairs_per_prompt=None, length_balance=False)


def prompt(pid: str = "p") -> Prompt:
    return Prompt(prompt_id=pid, question=f"Describe image {pid}.", image=f"{pid}.png")


def sc(pid: str, k: int, score: float, text: str | None = None) -> ScoredCandidate:
    n_rej = int(-score) if score <= 0 else 0
    return ScoredCandidate(candidate_id=f"{pid}#{k}", prompt_id=pid, text=text or f"answer {k} of {pid}",
                           claims=[f"claim {i}" for i in range(3)], rejected=[i < n_rej for i in range(3)],
                           score=float(score))


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def ids(pairs: list[PreferencePair]) -> list[str]:
    return [p.id for p in pairs]


# ----------------------------------------------------------------------------- scoring


def test_score_is_minus_rejected_claims_and_a_tie_rejects():
    cand = Candidate(prompt_id="p", sample_index=0, seed=0, text="A cat. A dog. A cow.")
    claims = [Claim(cand.id, i, t) for i, t in enumerate(["a cat", "a dog", "a cow"])]
    verdicts = [(0.6, 0.4), (0.5, 0.5), (0.2, 0.7)]  # accepted, tie -> rejected, rejected
    scores = {c.id: ClaimScore(c.id, f"Is there {c.text}?", py, pn) for c, (py, pn) in zip(claims, verdicts)}
    scored, mismatches = score_candidates([cand], {cand.id: claims}, scores)
    assert mismatches == []
    (s,) = scored
    assert s.rejected == [False, True, True]
    assert s.score == -2.0
    assert s.claims == ["a cat", "a dog", "a cow"]
    assert (s.candidate_id, s.prompt_id, s.text) == ("p#0", "p", cand.text)


def test_claims_are_ordered_by_index():
    cand = Candidate(prompt_id="p", sample_index=0, seed=0, text="x")
    claims = [Claim(cand.id, 1, "second"), Claim(cand.id, 0, "first")]
    scores = {c.id: ClaimScore(c.id, "q", 0.9, 0.1) for c in claims}
    (s,), _ = score_candidates([cand], {cand.id: claims}, scores)
    assert s.claims == ["first", "second"] and s.score == 0.0


def test_mismatches_are_reported_never_truncated():
    cands = [Candidate(prompt_id="p", sample_index=i, seed=i, text=f"t{i}") for i in range(4)]
    claims = {
        "p#0": [Claim("p#0", 0, "a"), Claim("p#0", 1, "b")],  # one verdict missing
        "p#1": [],  # no claims
        # p#2 absent from the dict: no claims either
        "p#3": [Claim("p#3", 0, "c")],  # one extra verdict for an unknown claim
    }
    scores = {cid: ClaimScore(cid, "q", 0.1, 0.9) for cid in ("p#0/0", "p#3/0", "p#3/7")}
    scored, mismatches = score_candidates(cands, claims, scores)
    assert scored == []
    reasons = dict(mismatches)
    assert list(reasons) == ["p#0", "p#1", "p#2", "p#3"]
    assert reasons["p#0"].startswith("2 claims but 1 judged questions") and "p#0/1" in reasons["p#0"]
    assert reasons["p#1"] == reasons["p#2"] == "no claims"
    assert reasons["p#3"].startswith("1 claims but 2 judged questions") and "p#3/7" in reasons["p#3"]


# ----------------------------------------------------------------------------- enumeration


def test_four_candidates_give_the_hand_computed_pairs():
    # scores: #0 = 0, #1 = -1, #2 = -1, #3 = -3
    # C(4,2) = 6: (0,1) 0>1; (0,2) 0>2; (0,3) 0>3; (1,2) tie -> dropped; (1,3) 1>3; (2,3) 2>3
    scored = [sc("p", 3, -3), sc("p", 1, -1), sc("p", 0, 0), sc("p", 2, -1)]
    pairs, stats = make_pairs(scored, {"p": prompt()}, NO_CAP_NO_BALANCE)
    assert ids(pairs) == ["p#0>p#1", "p#0>p#2", "p#0>p#3", "p#1>p#3", "p#2>p#3"]
    assert stats["combinations"] == 6 and stats["dropped_tie"] == 1
    assert stats["pairs_before_cap"] == stats["pairs_after_cap"] == stats["pairs_after_balance"] == 5
    p = pairs[3]
    assert (p.chosen, p.rejected, p.chosen_score, p.rejected_score) == ("answer 1 of p", "answer 3 of p", -1.0, -3.0)
    assert (p.question, p.image, p.prompt_id) == ("Describe image p.", "p.png", "p")
    assert p.provenance["chosen_n_rejected_claims"] == 1 and p.provenance["rejected_n_rejected_claims"] == 3
    assert p.provenance["chosen_n_claims"] == p.provenance["rejected_n_claims"] == 3
    assert p.provenance["score_gap"] == 2.0 and p.provenance["scoring"] == "claims"
    assert p.provenance["config"]["max_pairs_per_prompt"] is None


def test_min_gap_two_and_ties_only():
    scored = [sc("p", 0, 0), sc("p", 1, -1), sc("p", 2, -2)]
    pairs, stats = make_pairs(scored, {"p": prompt()}, PairsConfig(max_pairs_per_prompt=None, min_score_gap=2,
                                                                    length_balance=False))
    assert ids(pairs) == ["p#0>p#2"] and stats["dropped_gap"] == 2
    all_tied = [sc("p", i, -1) for i in range(3)]
    pairs, stats = make_pairs(all_tied, {"p": prompt()}, NO_CAP_NO_BALANCE)
    assert pairs == [] and stats["dropped_tie"] == 3 and stats["prompts_with_pairs"] == 0
    assert stats["length_balance_r"] is None and stats["mean_len_chosen_after"] is None


def test_identical_texts_are_dropped():
    scored = [sc("p", 0, 0, "A red ball."), sc("p", 1, -1, "  A red ball.\n"), sc("p", 2, -2, "A blue ball.")]
    pairs, stats = make_pairs(scored, {"p": prompt()}, NO_CAP_NO_BALANCE)
    assert ids(pairs) == ["p#0>p#2", "p#1>p#2"]
    assert stats["dropped_identical"] == 1


def test_unknown_prompt_raises():
    with pytest.raises(RecordError, match="q#0"):
        make_pairs([sc("q", 0, 0)], {"p": prompt()})


# ----------------------------------------------------------------------------- cap


def test_cap_is_seeded_and_order_independent():
    # two prompts, 5 candidates each with distinct scores -> 10 pairs each, capped to 2
    scored = [sc(pid, k, -k) for pid in ("a", "b") for k in range(5)]
    prompts = {pid: prompt(pid) for pid in ("a", "b")}
    cfg = PairsConfig(length_balance=False)
    pairs, stats = make_pairs(scored, prompts, cfg)
    assert stats["pairs_before_cap"] == 20 and stats["pairs_after_cap"] == 2 * 2 == len(pairs)
    shuffled = list(scored)
    random.Random(1).shuffle(shuffled)
    again, _ = make_pairs(shuffled, dict(reversed(list(prompts.items()))), cfg)
    assert sorted(ids(again)) == sorted(ids(pairs))
    assert make_pairs(scored, prompts, cfg)[0] == pairs  # deterministic
    other_seeds = {tuple(ids(make_pairs(scored, prompts, PairsConfig(seed=s, length_balance=False))[0]))
                   for s in range(1, 6)}
    assert len(other_seeds | {tuple(ids(pairs))}) > 1  # the seed matters


def test_cap_keeps_all_when_fewer():
    pairs, stats = make_pairs([sc("p", 0, 0), sc("p", 1, -1)], {"p": prompt()}, PairsConfig(length_balance=False))
    assert ids(pairs) == ["p#0>p#1"] and stats["pairs_after_cap"] == 1


# ----------------------------------------------------------------------------- length balancing

# (len_chosen, len_rejected) and shorten ratio (len_rej - len_ch) / len_rej:
#   P1 (10, 10) -> 0;  P2 (5, 10) -> 0.5;  P3 (12, 10) -> -0.2;  P4 (9, 10) -> 0.1
# objective |sum_c - sum_r| / sum_r over the kept pairs:
#   r = 0 .. 0.08:  keep P1, P3      -> |22 - 20| / 20 = 0.1
#   r = 0.10 .. 0.48: P1, P3, P4     -> |31 - 30| / 30 = 0.0333  <- minimum, first at r = 0.10
#   r = 0.50 .. 0.98: all four       -> |36 - 40| / 40 = 0.1
LENGTHS = [(10, 10), (5, 10), (12, 10), (9, 10)]


def test_choose_length_ratio_by_hand():
    assert [shorten_ratio(c, r) for c, r in LENGTHS] == [0, Fraction(1, 2), Fraction(-1, 5), Fraction(1, 10)]
    assert choose_length_ratio(LENGTHS) == Fraction(1, 10)
    # without P4: r = 0 gives |22 - 20| / 20 = 0.1 and r = 0.5 gives |27 - 30| / 30 = 0.1: a tie,
    # the first minimum (r = 0) wins
    assert choose_length_ratio(LENGTHS[:3]) == 0
    # every pair has a shorter chosen answer: r < 0.5 keeps nothing (skipped), r = 0.5 keeps both
    assert choose_length_ratio([(5, 10), (4, 8)]) == Fraction(1, 2)
    assert choose_length_ratio([]) is None


def test_make_pairs_balances_lengths_over_all_pairs():
    scored, prompts = [], {}
    for i, (c, r) in enumerate(LENGTHS, 1):
        pid = f"P{i}"
        prompts[pid] = prompt(pid)
        scored += [sc(pid, 0, 0, words("c", c)), sc(pid, 1, -1, words("r", r))]
    pairs, stats = make_pairs(scored, prompts, PairsConfig())
    assert [p.prompt_id for p in pairs] == ["P1", "P3", "P4"]
    assert stats["pairs_after_cap"] == 4 and stats["pairs_after_balance"] == 3
    assert stats["length_balance_r"] == 0.1
    assert stats["mean_len_chosen_before"] == 9.0 and stats["mean_len_rejected_before"] == 10.0
    assert stats["mean_len_chosen_after"] == pytest.approx(31 / 3) and stats["mean_len_rejected_after"] == 10.0
    assert all(p.provenance["length_balance_r"] == 0.1 for p in pairs)
    unbalanced, stats = make_pairs(scored, prompts, PairsConfig(length_balance=False))
    assert len(unbalanced) == 4 and stats["length_balance_r"] is None


def test_balance_lengths_on_pairs_directly():
    pairs = [PreferencePair("p", "q", None, words("c", c), words("r", r), f"p#{i}", f"p#{i + 10}", 0.0, -1.0)
             for i, (c, r) in enumerate(LENGTHS)]
    kept, r = balance_lengths(pairs)
    assert r == 0.1 and [p.chosen_id for p in kept] == ["p#0", "p#2", "p#3"]


# ----------------------------------------------------------------------------- holistic


def test_holistic_question():
    q = holistic_question("What is in the image?", "A red\nball on grass.")
    assert '"A red ball on grass."' in q and '"What is in the image?"' in q
    assert q.endswith("Please answer yes or no.")
    assert "question" not in holistic_question("", "A cat.").split("\n")[0]


def test_holistic_scores_and_pairs():
    cands = [Candidate(prompt_id="p", sample_index=i, seed=i, text=t)
             for i, t in enumerate(["A cat.", "A dog.", "A cow.", "", "A hen."])]
    verdicts = {"p#0": (0.7, 0.2), "p#1": (0.4, 0.1), "p#2": (0.4, 0.1), "p#3": (0.5, 0.5)}
    scores = {cid: ClaimScore(cid, holistic_question("Q", "t"), py, pn) for cid, (py, pn) in verdicts.items()}
    scored, mismatches = score_holistic(cands, scores)
    assert dict(mismatches) == {"p#3": "empty answer", "p#4": "no holistic score"}
    assert [s.score for s in scored] == pytest.approx([0.5, 0.3, 0.3])
    assert [s.rejected for s in scored] == [[False]] * 3
    cfg = PairsConfig(scoring="holistic", max_pairs_per_prompt=None, length_balance=False)
    pairs, stats = make_pairs(scored, {"p": prompt()}, cfg, mismatches)
    # gaps 0.2, 0.2 (below min_score_gap=1, still paired) and 0 (tie: dropped)
    assert ids(pairs) == ["p#0>p#1", "p#0>p#2"]
    assert stats["dropped_tie"] == 1 and stats["candidates"] == 5 and stats["unpairable"] == 2
    assert pairs[0].provenance["scoring"] == "holistic"


def test_config_validation():
    for bad in ({"scoring": "votes"}, {"max_pairs_per_prompt": 0}, {"min_score_gap": 0}):
        with pytest.raises(ConfigError):
            PairsConfig(**bad)


def test_keep_support_drops_pairs_that_win_by_saying_less():
    def cand(k: int, verdicts: list[bool]) -> ScoredCandidate:  # verdicts: True = rejected claim
        return ScoredCandidate(candidate_id=f"p#{k}", prompt_id="p", text=f"answer {k}", claims=[f"c{i}" for i in range(len(verdicts))],
                               rejected=verdicts, score=-float(sum(verdicts)))

    # accepted / rejected claims: #0 3/0, #1 3/1, #2 1/0 (says less), #3 3/2
    group = [cand(0, [False] * 3), cand(1, [False] * 3 + [True]), cand(2, [False]), cand(3, [False] * 3 + [True] * 2)]
    cfg = PairsConfig(max_pairs_per_prompt=None, length_balance=False, keep_support=True)
    pairs, stats = make_pairs(group, {"p": prompt()}, cfg)
    # by score: 0>1, 0>3, 1>3, 2>1, 2>3 (0~2 tie); 2>1 and 2>3 win with 1 accepted claim against 3
    assert sorted((p.chosen_id, p.rejected_id) for p in pairs) == [("p#0", "p#1"), ("p#0", "p#3"), ("p#1", "p#3")]
    assert stats["dropped_less_support"] == 2
    plain, _ = make_pairs(group, {"p": prompt()}, NO_CAP_NO_BALANCE)
    assert len(plain) == 5
