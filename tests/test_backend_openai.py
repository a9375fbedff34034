"""The ``openai`` serving backend on recorded server replies and a tiny local HTTP server.

Recorded replies (tests/data/openai/, shapes of vLLM and transformers serve) -> p_yes / p_no with
hand-computed expectations; yes or no outside the top-k; missing log-probs -> a capability
error; retries on 429 then 200; the request log answering a rerun without resending; the `n`
probe falling back to one request per seed; config validation; ``rlaifv conquer --backend
openai`` end to end against the local server. The real ``transformers serve`` process is in
tests/test_backend_serve.py.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from rlaifv.backends.base import (CapabilityError, BackendError, Decoding, EndpointOptions, InputRejected, YesNo, manifest_view,
                                  token_word, yes_no_from_top_logprobs)
from rlaifv.backends.openai_server import (OpenAIBackend, answer_tail_logprobs, completion_first_logprobs, first_token_logprobs)
from rlaifv.config import ConfigError, load_config

DATA = Path(__file__).parent / "data" / "openai"
E = math.exp


def recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- mapping


def test_token_word_reads_every_spacing_and_nothing_else():
    for tok in ("yes", "Yes", " yes", " Yes", "\u2581Yes", "\u0120yes"):
        assert token_word(tok) == "yes", tok
    for tok in ("no", "No", " No", "\u2581no", "\u0120No"):
        assert token_word(tok) == "no", tok
    for tok in ("YES", " Yesterday", "  Yes", " Not", "", "\u2581", " n", "Noo"):
        assert token_word(tok) is None, tok


def test_vllm_chat_reply_maps_to_p_yes_p_no():
    pairs = first_token_logprobs(recorded("chat_yes_no_vllm.json"))
    r = yes_no_from_top_logprobs(pairs)
    # " Yes" -0.5, "Yes" -2.0, " yes" -4.0 ; " No" -1.5 (" Yesterday", " Not", " The" are neither)
    assert r.p_yes == pytest.approx(E(-0.5) + E(-2.0) + E(-4.0), abs=1e-12)
    assert r.p_yes == pytest.approx(0.7601815818, abs=1e-9)
    assert r.p_no == pytest.approx(E(-1.5), abs=1e-12)
    assert r.outside_top_k == ()


def test_override_tokens_are_matched_exactly():
    pairs = first_token_logprobs(recorded("chat_yes_no_vllm.json"))
    r = yes_no_from_top_logprobs(pairs, yes_tokens=[" Yes"], no_tokens=[" No", " Not"])
    assert (r.p_yes, r.p_no) == (pytest.approx(E(-0.5)), pytest.approx(E(-1.5) + E(-7.0)))


def test_no_outside_top_k_is_recorded_not_guessed():
    r = yes_no_from_top_logprobs(first_token_logprobs(recorded("chat_yes_only_vllm.json")))
    assert r == YesNo(pytest.approx(E(-0.1)), 0.0, ("no",))


def test_legacy_completion_reply():
    r = yes_no_from_top_logprobs(completion_first_logprobs(recorded("completion_logprobs_legacy.json")))
    assert r.p_no == pytest.approx(E(-0.25) + E(-3.5))
    assert r.p_yes == pytest.approx(E(-1.75))


def test_missing_logprobs_is_none():
    assert first_token_logprobs(recorded("chat_no_logprobs_transformers_serve.json")) is None


def test_prompt_logprobs_tail_is_the_answer():
    rows = recorded("chat_prompt_logprobs_vllm.json")["prompt_logprobs"]
    # answer "There is" = ids [300, 301] + end-of-turn 2: its LAST occurrence (not the user turn's <|im_end|>)
    assert answer_tail_logprobs(rows, [300, 301, 2]) == [-0.5, -1.25, -0.125]
    with pytest.raises(BackendError, match="not found"):
        answer_tail_logprobs(rows, [300, 999, 2])


# ----------------------------------------------------------------------------- a local server


class FakeServer:
    """A tiny OpenAI-style server: ``script(body, hits) -> (status, reply)``; records every body."""

    def __init__(self, script) -> None:
        self.script, self.bodies = script, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                status, reply = outer.script(body, len(outer.bodies))
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script) -> FakeServer:
        servers.append(FakeServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


IMG = Image.new("RGB", (16, 16), (200, 30, 30))


def opts(url: str, **kw) -> EndpointOptions:
    return EndpointOptions(base_url=url, model="m", backoff=0.0, **kw)


def test_retry_on_429_then_200_and_resume_does_not_resend(serve, tmp_path):
    ok = recorded("chat_yes_no_vllm.json")
    srv = serve(lambda body, hits: (429, {"error": "busy"}) if hits == 1 else (200, ok))
    be = OpenAIBackend(opts(srv.url), stage="conquer", out=tmp_path)
    [r] = be.yes_no(IMG, ["Is it red? Please answer yes or no."])
    assert r.p_yes == pytest.approx(0.7601815818, abs=1e-9)
    assert len(srv.bodies) == 2 and be.counts()["retries"] == 1 and be.counts()["requests"] == 1
    body = srv.bodies[-1]
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (1, 0.0, True, 20)
    content = body["messages"][0]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "Is it red? Please answer yes or no."}
    log = [json.loads(x) for x in (tmp_path / "backend_requests.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["attempts"] == 2 and log[0]["outside_top_k"] == []
    assert log[0]["request"]["messages"][0]["content"][0]["image_url"]["url"].startswith("sha256:")  # images not copied into the log
    again = OpenAIBackend(opts(srv.url), stage="conquer", out=tmp_path)  # a rerun: answered from the log
    assert again.yes_no(IMG, ["Is it red? Please answer yes or no."]) == [r]
    assert len(srv.bodies) == 2 and again.counts() == {"reused": 1, "identical_candidates_prompts": 0}


def test_retries_exhausted_and_refused_inputs(serve, tmp_path):
    srv = serve(lambda body, hits: (503, {"error": "down"}))
    with pytest.raises(BackendError, match=r"HTTP 503 .* after 3 attempt"):
        OpenAIBackend(opts(srv.url, max_retries=2), stage="conquer", out=tmp_path).yes_no(IMG, ["q"])
    assert len(srv.bodies) == 3
    bad = serve(lambda body, hits: (400, {"error": "prompt too long"}))
    with pytest.raises(InputRejected, match="HTTP 400"):
        OpenAIBackend(opts(bad.url), stage="conquer").yes_no(IMG, ["q"])
    assert len(bad.bodies) == 1  # never retried: the input's fault


def test_missing_logprobs_is_a_capability_error(serve):
    srv = serve(lambda body, hits: (200, recorded("chat_no_logprobs_transformers_serve.json")))
    be = OpenAIBackend(opts(srv.url), stage="conquer")
    with pytest.raises(CapabilityError, match="returned no log-probs.*capability 'logprobs'"):
        be.yes_no(IMG, ["Is it red?"])
    assert be.capabilities().yes_no is None


def _chat(texts, finish="stop") -> dict:
    return {"object": "chat.completion", "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                                                     for i, t in enumerate(texts)]}


def test_ignored_n_falls_back_to_one_request_per_seed(serve, tmp_path):
    srv = serve(lambda body, hits: (200, _chat([f" answer {body.get('seed')} "])))  # one choice whatever n says
    be = OpenAIBackend(opts(srv.url, use_n=True), stage="sample", out=tmp_path)
    d = Decoding(0.7, 0.9, 16)
    with pytest.warns(UserWarning, match="ignored n=3"):
        out = be.sample([IMG, IMG], ["q1", "q2"], [[11, 12, 13], [21, 22, 2**40 + 5]], [d, d, d])
    assert [[g.text for g in row] for row in out] == [["answer 11", "answer 12", "answer 13"], ["answer 21", "answer 22", "answer 5"]]
    assert srv.bodies[0]["n"] == 3 and all("n" not in b for b in srv.bodies[1:])  # one probe, then per seed
    assert len(srv.bodies) == 7 and be.counts()["n_fallbacks"] == 1 and be.capabilities().sample_n is False
    assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in srv.bodies} == {(0.7, 0.9, 16)}
    be.sample([IMG], ["q3"], [[31, 32, 33]], [d, d, d])  # decided once: no second probe
    assert all("n" not in b for b in srv.bodies[7:]) and len(srv.bodies) == 10


def test_honoured_n_is_one_request_per_prompt_and_identical_candidates_are_counted(serve):
    srv = serve(lambda body, hits: (200, _chat(["same"] * body.get("n", 1), finish="length")))
    be = OpenAIBackend(opts(srv.url, use_n=True), stage="sample")
    d = Decoding(0.7, 1.0, 8)
    out = be.sample([IMG, IMG], ["q1", "q2"], [[1, 2], [3, 4]], [d, d])
    assert len(srv.bodies) == 2 and be.capabilities().sample_n is True
    assert all(g.truncated and g.text == "same" for row in out for g in row)
    assert be.counts()["identical_candidates_prompts"] == 2


# ----------------------------------------------------------------------------- config


def test_config_validation_one_line_errors():
    from rlaifv.stages.conquer import ConquerConfig
    from rlaifv.stages.sample import SampleConfig

    with pytest.raises(ConfigError, match="needs endpoint.base_url"):
        load_config(SampleConfig, None, {"model": "m", "backend": "openai"})
    with pytest.raises(ConfigError, match="unknown backend 'tgi'"):
        load_config(SampleConfig, None, {"model": "m", "backend": "tgi"})
    with pytest.raises(ConfigError, match="max_concurrency must be > 0"):
        load_config(SampleConfig, None, {"model": "m", "backend": "openai", "endpoint": {"base_url": "http://x/v1", "max_concurrency": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SampleConfig, None, {"model": "m", "endpoint": {"base_uri": "http://x/v1"}})
    with pytest.raises(ConfigError, match="direct first-answer-token"):
        load_config(ConquerConfig, None, {"model": "m", "backend": "openai", "repetition_penalty": 1.1,
                                          "endpoint": {"base_url": "http://x/v1"}})


def test_manifest_view_keeps_old_hf_manifests_and_drops_operational_fields():
    from dataclasses import asdict

    from rlaifv.stages.sample import SampleConfig

    hf = manifest_view(asdict(SampleConfig(model="m")))
    assert not {"backend", "endpoint", "vllm"} & set(hf)
    op = manifest_view(asdict(SampleConfig(model="m", backend="openai", endpoint=EndpointOptions(base_url="http://a/v1", timeout=5))))
    assert op["backend"] == "openai" and "vllm" not in op
    assert op["endpoint"] == {"model": "", "top_logprobs": 20, "use_n": False}


# ----------------------------------------------------------------------------- the CLI, end to end


def test_cli_conquer_backend_openai(serve, tmp_path, rlaifv_bin):
    import subprocess

    replies = {"Is there a cat? Please answer yes or no.": "chat_yes_no_vllm.json",
               "Is there a dog? Please answer yes or no.": "chat_yes_only_vllm.json"}
    srv = serve(lambda body, hits: (200, recorded(replies[body["messages"][0]["content"][1]["text"]])))
    IMG.save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt_id": "p1", "question": "Describe.", "image": "a.png"}) + "\n")
    qs = [{"claim_id": "p1#0/0", "claim": "There is a cat.", "question": "Is there a cat? Please answer yes or no."},
          {"claim_id": "p1#0/1", "claim": "There is a dog.", "question": "Is there a dog? Please answer yes or no."}]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "scores"
    cmd = rlaifv_bin + ["conquer", "--questions", str(tmp_path / "questions.jsonl"), "--prompts", str(tmp_path / "prompts.jsonl"),
                        "--out", str(out), "--model", "labeler", "--backend", "openai", "--base-url", srv.url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "conquer via openai: 2 request(s) sent" in proc.stdout and "outside the top-k: 1 of 2" in proc.stdout
    from rlaifv.records import ClaimScore
    from rlaifv.store import read_records

    scores = {s.claim_id: s for s in read_records(out, ClaimScore)}
    assert scores["p1#0/0"].p_yes == pytest.approx(0.7601815818, abs=1e-6) and scores["p1#0/0"].p_no == pytest.approx(E(-1.5), abs=1e-6)
    assert scores["p1#0/1"].p_no == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outside_top_k"]["count"] == 1 and summary["outside_top_k"]["ids"] == ["p1#0/1"]
    assert srv.bodies[0]["model"] == "labeler"


def test_feedback_run_reports_backend_counts(serve, tmp_path):
    """sample and conquer both through a server inside `feedback`: counts and warnings reach feedback.json."""
    from rlaifv.stages.feedback import FeedbackConfig, feedback

    def script(body, hits):
        if body.get("logprobs"):
            return 200, recorded("chat_yes_no_vllm.json" if "red" in body["messages"][0]["content"][1]["text"] else "chat_yes_only_vllm.json")
        return 200, _chat(["There is a red circle. There is a blue square."])  # a server that ignores the seed

    srv = serve(script)
    IMG.save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt_id": "p1", "question": "Describe.", "image": "a.png"}) + "\n")
    ep = {"base_url": srv.url}
    cfg = load_config(FeedbackConfig, None, {"prompts": str(tmp_path / "prompts.jsonl"), "out": str(tmp_path / "run"),
                                             "sample": {"model": "policy", "n": 3, "backend": "openai", "endpoint": ep},
                                             "conquer": {"model": "labeler", "backend": "openai", "endpoint": ep}})
    with pytest.warns(UserWarning):
        summary = feedback(cfg)
    got = json.loads((tmp_path / "run" / "feedback.json").read_text())
    assert got["backends"]["sample"]["this_run"]["requests"] == 3 and got["backends"]["sample"]["this_run"]["identical_candidates_prompts"] == 1
    assert got["backends"]["conquer"]["outside_top_k"]["count"] == 3 and got["backends"]["conquer"]["outside_top_k"]["questions"] == 6
    assert any("identical sampled candidates" in w for w in got["warnings"])
    assert summary["counts"]["scores"] == 6 and len(srv.bodies) == 3 + 2  # 6 claims, 2 distinct questions (one request each)


def test_best_of_n_through_a_server(serve, tmp_path):
    """Sampling (one request per seed) and the perplexity scorer (vLLM's prompt_logprobs) through the
    openai backend; the answer tokens come from the local processor (here the sandbox policy folder)."""
    from rlaifv.models.chat import answer_ids
    from rlaifv.models.load import load_processor
    from rlaifv.stages.bestofn import BestOfNConfig, BestOfNResult, best_of_n_run
    from rlaifv.store import read_records

    model = str(Path(__file__).resolve().parents[1] / "src" / "rlaifv" / "assets" / "sandbox" / "policy-direct")
    proc = load_processor(model)
    texts = {0: "There is a red circle.", 1: "There is a short blue square at the top left."}

    def script(body, hits):
        if "prompt_logprobs" not in body:  # sampling: the text depends on the seed's parity
            return 200, _chat([texts[body["seed"] % 2]])
        answer = body["messages"][1]["content"][0]["text"]
        lp = -0.5 if "short" in answer else -0.1
        rows = [None, {"4": {"logprob": -3.0}}] + [{str(t): {"logprob": lp, "rank": 1}} for t in answer_ids(proc, answer)]
        return 200, {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "length"}],
                     "prompt_logprobs": rows}

    srv = serve(script)
    IMG.save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt_id": "p1", "question": "Describe.", "image": "a.png"}) + "\n")
    cfg = load_config(BestOfNConfig, None, {"prompts": str(tmp_path / "prompts.jsonl"), "out": str(tmp_path / "run"), "scorer": "perplexity",
                                            "sample": {"model": model, "n": 4, "backend": "openai", "endpoint": {"base_url": srv.url}}})
    summary = best_of_n_run(cfg)
    [res] = list(read_records(tmp_path / "run" / "results", BestOfNResult))
    seeds = [c["seed"] % 2**31 for c in res.candidates]
    assert [c["text"] for c in res.candidates] == [texts[s % 2] for s in seeds]
    assert res.scores() == [pytest.approx(-0.1 if "short" not in t else -0.5) for t in (c["text"] for c in res.candidates)]
    assert "short" not in res.chosen
    n_score = len({c["text"] for c in res.candidates})  # identical answers share one request (same body)
    assert summary["backend requests"] == 4 + n_score == len(srv.bodies)


def test_hf_backend_is_the_sample_stage(tmp_path):
    """The hf backend's seeded sampling is stages/sample.py's, candidate for candidate."""
    from rlaifv.backends.base import Decoding
    from rlaifv.backends.hf import HFBackend
    from rlaifv.models.load import load_vlm
    from rlaifv.records import Prompt
    from rlaifv.stages.sample import SampleConfig, candidate_seed, sample

    model, proc = load_vlm("sandbox:policy")
    cfg = SampleConfig(model="sandbox:policy", n=2, temperature=0.9, max_new_tokens=12)
    ps = [Prompt("a", "Describe the image in detail."), Prompt("b", "What is in the image?")]
    images = [IMG, Image.new("RGB", (16, 16), (20, 20, 220))]
    ref = sample(model, proc, ps, images, cfg)
    seeds = [[candidate_seed(cfg.seed, p.prompt_id, k) for k in range(2)] for p in ps]
    got = HFBackend(model, proc, cfg).sample(images, [p.question for p in ps], seeds, [Decoding(0.9, 1.0, 12)] * 2)
    assert [g.text for row in got for g in row] == [c.text for c in ref]
    assert [g.truncated for row in got for g in row] == [c.decoding["truncated"] for c in ref]
