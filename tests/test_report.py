"""``rlaifv report``: the data the page embeds equals the stored records, flags, plots, run kinds,
user errors, and a 10,000-prompt run in bounded size (the page itself: test_report_browser.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from report_runs import env, expected, shared_sandbox_run
from rlaifv.records import Claim
from rlaifv.report import build_report, collect_run
from rlaifv.report.html import page, read_report_data
from rlaifv.report.collect import RunView
from rlaifv.store import read_records


@pytest.fixture(scope="session")
def run(tmp_path_factory, rlaifv_bin) -> Path:
    return shared_sandbox_run(tmp_path_factory, rlaifv_bin)


@pytest.fixture(scope="module")
def report(run, rlaifv_bin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pages") / "page.html"
    proc = subprocess.run(rlaifv_bin + ["report", str(run), "--out", str(out)], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report of a feedback run (5 prompts)" in proc.stdout
    return out


def _claims(entries):
    return {cl["id"]: cl for e in entries for c in e["cands"] for cl in c["claims"]}


def test_page_holds_every_prompt_and_claim_with_its_stored_verdict(run, report):
    want = expected(run)
    meta, index, entries = read_report_data(report)
    assert [e["id"] for e in entries] == want["prompts"] == [r[1] for r in index]  # the prompts file's order, rejected one too
    claims = _claims(entries)
    assert set(claims) == {c.id for c in read_records(run / "claims", Claim)}
    assert {v for v in want["verdict"].values()} == {"accepted", "rejected"}  # the run has both (not vacuous)
    for cid, s in want["scores"].items():
        cl = claims[cid]
        assert (cl["y"], cl["n"]) == (round(s.p_yes, 4), round(s.p_no, 4)) and cl["q"] == s.question
        assert cl["v"] == ("rej" if s.p_no >= s.p_yes else "acc")
    kept = {(p["c"], p["r"]) for e in entries for p in e["pairs"] if p["fate"] == "kept"}
    assert kept == want["pairs"] and kept
    assert any(p["fate"] == "cap" for e in entries for p in e["pairs"])  # max 1 pair per prompt dropped some
    for e, row in zip(entries, index):  # the index the page filters on agrees with the entries
        n_claims = sum(len(c["claims"]) for c in e["cands"])
        n_rej = sum(cl["v"] == "rej" for c in e["cands"] for cl in c["claims"])
        assert row[4:7] == [n_claims, n_rej, sum(p["fate"] == "kept" for p in e["pairs"])]
    assert meta["kind"] == "feedback" and meta["truth"] is True


def test_flags_rejects_truncation_and_ground_truth(run, report):
    want = expected(run)
    _, _, entries = read_report_data(report)
    by_id = {e["id"]: e for e in entries}
    assert want["truncated_prompts"], "the run was made so that some answers hit max_new_tokens"
    assert sorted(i for i, e in by_id.items() if "truncated" in e["flags"]) == want["truncated_prompts"]
    bad = by_id["bad-image"]
    assert bad["flags"] == ["rejects"] and bad["cands"] == [] and "image file not found" in bad["rejects"][0]["reason"]
    assert bad["img"] is None and "missing.png" in bad["img_note"]
    assert all(e["img"].startswith("data:image/png;base64,") for i, e in by_id.items() if i != "bad-image")  # embedded
    truths = [cl.get("gt") for e in entries for c in e["cands"] for cl in c["claims"]]
    assert False in truths and True in truths  # sandbox prompts: each claim checked against its scene
    view = collect_run(run)
    sample = next(r for r in view.summary["stages"] if r["stage"] == "sample")
    assert sample["rejects"] == 1 and "image file not found" in sample["reasons"][0][0]
    assert view.summary["truncated"] == sum(c["trunc"] for e in entries for c in e["cands"])


def test_plots_written_beside_the_page(report):
    folder = report.parent / "page-plots"
    for name in ("pair_gaps", "pair_lengths", "claims_per_answer", "labeler_mass"):
        assert (folder / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="data:image/png;base64,' in report.read_text()  # and embedded in the page


def test_mismatch_and_no_claims_flags(run, tmp_path):
    """Drop one claim's verdict and all claims of another answer: both flagged, the stored pairs kept."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    claims = [json.loads(line) for line in (copy / "claims" / "shard-00000.jsonl").read_text().splitlines()]
    no_claims = claims[-1]["candidate_id"]
    (copy / "claims" / "shard-00000.jsonl").write_text("".join(json.dumps(c) + "\n" for c in claims if c["candidate_id"] != no_claims))
    scores = (copy / "scores" / "shard-00000.jsonl").read_text().splitlines()
    dropped = json.loads(scores[0])["claim_id"]
    (copy / "scores" / "shard-00000.jsonl").write_text("\n".join(scores[1:]) + "\n")
    res = build_report(copy, tmp_path / "r.html")
    _, _, entries = read_report_data(res["path"])
    cands = {c["id"]: c for e in entries for c in e["cands"]}
    broken = cands[dropped.rsplit("/", 1)[0]]
    assert "no verdict for" in broken["mismatch"] and broken["score"] is None
    assert next(cl for cl in broken["claims"] if cl["id"] == dropped)["v"] == "none"
    assert cands[no_claims]["claims"] == [] and cands[no_claims]["mismatch"] == "no claims"
    flags = {e["id"]: e["flags"] for e in entries}
    assert "mismatch" in flags[dropped.split("#")[0]] and "no_claims" in flags[no_claims.split("#")[0]]


def test_cli_one_line_errors(tmp_path, rlaifv_bin, run):
    for argv, words in (([str(tmp_path)], "is not a run folder"), ([str(tmp_path / "nope")], "does not exist"),
                        ([str(run), "--images", "inline", "--out", str(tmp_path / "x.html")], "--images 'inline'")):
        proc = subprocess.run(rlaifv_bin + ["report", *argv], env=env(), capture_output=True, text=True, timeout=120)
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_stage_folders_mirror_the_feedback_stage():
    from rlaifv.report.collect import STAGE_FOLDERS
    from rlaifv.stages.feedback import STAGE_FOLDERS as STAGES

    assert STAGE_FOLDERS == STAGES


def test_script_breaking_text_is_inert():
    view = RunView("feedback", Path("x"), prompts=[{"key": "a</script>b", "id": "a</script>b", "it": None, "q": "<b>q</b>",
                                                    "pairs": [], "rejects": [], "cands": [], "flags": []}])
    text = page(view, "", "t")
    assert text.count("</script>") == 4  # meta, index, one chunk, the script: the id did not close one
    _, index, entries = read_report_data_text(text)
    assert index[0][1] == "a</script>b" and entries[0]["q"] == "<b>q</b>"


def read_report_data_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
        f.write(text)
    return read_report_data(Path(f.name))


def test_ten_thousand_prompts_bounded(tmp_path):
    """10,000 prompts x 2 answers x 1 claim: a bounded page, nothing pre-rendered (its build and
    load times are measured side by side in bench/bench_report.py, not asserted here)."""
    from rlaifv.report.synthetic import synthetic_run

    run = synthetic_run(tmp_path / "big", 10_000, n=2, claims=1)
    res = build_report(run)
    assert res["bytes"] < 4_000_000, res["bytes"]
    meta, index, entries = read_report_data(res["path"])
    assert len(index) == len(entries) == 10_000 and meta["chunks"] == 200
    text = res["path"].read_text()
    assert '<section class="prompt" data-key="syn-' not in text  # rendered page by page by the script, never all at once
    assert res["images"] == {"embedded": 0, "linked": 10_000, "missing": 0}  # auto: linked beyond 1,000 prompts
    assert (res["path"].parent / entries[0]["img"]).is_file()


def test_iterate_run(tmp_path):
    from rlaifv.report.synthetic import synthetic_run

    run = tmp_path / "it"
    for i in (1, 2):
        synthetic_run(run / f"iter-{i}" / "feedback", 6, n=3, claims=2, seed=i)
    rows = [{"iteration": 0, "chair_s": 0.5, "chair_i": 0.2, "recall": 0.8}, {"iteration": 1, "chair_s": 0.4, "chair_i": 0.1, "recall": 0.8},
            {"iteration": 2, "chair_s": 0.3, "chair_i": 0.1, "recall": 0.7}]
    (run / "report.json").write_text(json.dumps(rows))
    res = build_report(run)
    assert res["kind"] == "iterate" and res["prompts"] == 12
    meta, _, entries = read_report_data(res["path"])
    assert meta["iterations"] == [1, 2] and {e["key"].split("/")[0] for e in entries} == {"it1", "it2"}
    assert (res["path"].parent / "report-plots" / "iterate_curves.png").exists()
    assert collect_run(run).summary["rows"] == rows


def test_best_of_n_ranks_every_scorer(tmp_path):
    run = tmp_path / "bon"
    (run / "results").mkdir(parents=True)
    cands = [{"candidate_id": f"p#{k}", "sample_index": k, "text": t, "scores": s, "claims": ["A cat."], "rejected": [k == 1]}
             for k, (t, s) in enumerate([("a", {"rlaifv-reward": 0.1, "labeler": -1.0}), ("b c", {"rlaifv-reward": 0.5, "labeler": -1.0}),
                                          ("d", {"rlaifv-reward": 0.3, "labeler": 0.0})])]
    row = {"prompt_id": "p", "question": "q?", "scorer": "rlaifv-reward", "chosen_index": 1, "chosen": "b c", "candidates": cands,
           "schema_version": 1, "kind": "best_of_n"}
    (run / "results" / "shard-00000.jsonl").write_text(json.dumps(row) + "\n")
    (run / "summary.json").write_text(json.dumps({"prompts": 1}))
    view = collect_run(run)
    c = view.prompts[0]["cands"]
    assert [x["ranks"]["rlaifv-reward"] for x in c] == [3, 1, 2]
    assert [x["ranks"]["labeler"] for x in c] == [2, 3, 1]  # tie -1/-1: the lower index ranks first
    assert view.summary["agreement"] == {"rlaifv-reward": 1.0, "labeler": 0.0}
    assert build_report(run)["kind"] == "best-of-n"


def test_sandbox_overlay_by_hand():
    from rlaifv.sandbox.report_overlay import overlay
    from rlaifv.sandbox.world import Scene, SceneObject

    scene = Scene("s", [SceneObject("circle", "red", "large", 0)])
    cands = [{"id": "s#0", "text": "There is a large red circle at the top left. There is a blue star.",
              "claims": [{"t": "There is a large red circle at the top left.", "v": "acc"}, {"t": "There is a blue star.", "v": "acc"},
                         {"t": "The mood is calm.", "v": "rej"}]},
             {"id": "s#1", "text": "There is a red circle.", "claims": [{"t": "There is a red circle.", "v": "acc"}]}]
    entries = [{"key": "s", "cands": cands, "pairs": [{"c": "s#1", "r": "s#0", "fate": "kept"}]}]
    res = overlay(entries, {"s": {"scene": scene.to_dict(), "source": "sandbox"}})
    assert [cl["gt"] for cl in cands[0]["claims"]] == [True, False, None]
    assert cands[0]["hall"] == ["star"] and cands[1]["hall"] == [] and entries[0]["hallucination"] is True
    assert (res["tp"], res["fp"], res["fn"], res["tn"]) == (0, 0, 1, 2) and res["unparsable_claims"] == 1
    assert res["chair_i"] == 1 / 3 and res["pairs_chosen_fewer_hallucinated"] == 1.0


def test_truncation_is_what_a_longer_budget_shows(run):
    """An answer flagged truncated continues with a larger budget; one not flagged is unchanged."""
    from rlaifv.images import load_image
    from rlaifv.models.load import load_vlm
    from rlaifv.records import Candidate, Prompt
    from rlaifv.stages.sample import SampleConfig, sample

    cands = list(read_records(run / "candidates", Candidate))
    pid = next(p for p in {c.prompt_id for c in cands} if len({c.decoding["truncated"] for c in cands if c.prompt_id == p}) == 2)
    prompt = next(p for p in read_records(run / "prompts" / "prompts.jsonl", Prompt) if p.prompt_id == pid)
    model, proc = load_vlm("sandbox:policy")
    longer = sample(model, proc, [prompt], [load_image(prompt, run / "prompts")], SampleConfig(model="sandbox:policy", n=3, max_new_tokens=48))
    for old, new in zip([c for c in cands if c.prompt_id == pid], longer):
        assert (new.text == old.text) == (not old.decoding["truncated"]), (old.text, new.text)
        assert new.text.startswith(old.text[:-5])
