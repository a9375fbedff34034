"""The sandbox audit of a feedback run, on a hand-built run folder with known truth."""

from __future__ import annotations

import json

from rlaifv.records import Candidate, Claim, ClaimScore, PreferencePair, Prompt
from rlaifv.sandbox.audit import audit_run, claim_truth
from rlaifv.sandbox.world import Scene, SceneObject
from rlaifv.store import RecordStore

SCENE = Scene("s", [SceneObject("circle", "red", "large", 0), SceneObject("square", "blue", "small", 4)])


def test_claim_truth():
    assert claim_truth("There is a large red circle at the top left.", SCENE) is True
    assert claim_truth("There is a red circle.", SCENE) is True  # unstated attributes are not errors
    assert claim_truth("There is a large red circle at the top right.", SCENE) is False  # wrong cell
    assert claim_truth("There is a star.", SCENE) is False
    assert claim_truth("The sky is blue.", SCENE) is None


def test_audit_run_by_hand(tmp_path):
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    p = Prompt("s", "Describe the image in detail.", image="x.png", metadata={"scene": SCENE.to_dict()})
    (run / "prompts" / "prompts.jsonl").write_text(json.dumps(p.to_dict()) + "\n")
    good = "There is a large red circle at the top left. There is a small blue square in the center."
    bad = "There is a large red circle at the top left. There is a small green star at the bottom left."
    cands = [Candidate("s", 0, 1, good, decoding={"temperature": 0.4}), Candidate("s", 1, 2, bad, decoding={"temperature": 1.3})]
    claims = [Claim("s#0", 0, "There is a large red circle at the top left."), Claim("s#0", 1, "There is a small blue square in the center."),
              Claim("s#1", 0, "There is a large red circle at the top left."), Claim("s#1", 1, "There is a small green star at the bottom left.")]
    # labeler: rejects the star (true positive) and wrongly rejects the square (false positive)
    verdicts = {"s#0/0": (0.9, 0.1), "s#0/1": (0.4, 0.6), "s#1/0": (0.8, 0.2), "s#1/1": (0.1, 0.9)}
    for folder, recs in (("candidates", cands), ("claims", claims),
                         ("scores", [ClaimScore(k, "q", *v) for k, v in verdicts.items()]),
                         ("pairs", [PreferencePair("s", "q", "x.png", good, bad, "s#0", "s#1", -1, -1)])):
        with RecordStore(run / folder, type(recs[0])) as st:
            st.write(recs)
    res = audit_run(run)
    assert res["claims_per_answer"] == 2.0
    lab = res["labeler_rejections_vs_truth"]
    assert (lab["tp"], lab["fp"], lab["fn"], lab["tn"]) == (1, 1, 0, 2)  # precision 1/2, recall 1/1
    assert lab["precision"] == 0.5 and lab["recall"] == 1.0
    assert res["pairs_chosen_fewer_hallucinated_objects"] == 1.0  # chosen: 0 hallucinated shapes, rejected: 1 (star)
    assert res["pairs_chosen_fewer_false_claims"] == 1.0
    assert res["pair_temperatures"] == {"chosen": {"0.4": 1}, "rejected": {"1.3": 1}}
