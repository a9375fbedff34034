"""The ``openai`` backend against a REAL local server: ``transformers serve`` on the sandbox policy (CPU, fp32).

One server process for the module (started on a free port, waited for on /health, stopped in
teardown). Checked: greedy sampling through the server equals the ``hf`` backend's texts on the
same model and prompts; the server's ignored ``n`` is detected and reported; ``rlaifv sample
--backend openai`` end to end; ``rlaifv conquer --backend openai`` stops with one error line
naming the missing ``logprobs`` capability (transformers serve 5.24 returns no log-probs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")  # the `serve` extra (part of `dev`)
pytest.importorskip("uvicorn")

MODEL = Path(__file__).resolve().parents[1] / "src" / "rlaifv" / "assets" / "sandbox" / "policy-direct"
N_PROMPTS = 4
MAX_NEW = 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``transformers serve MODEL`` on a free port; yields its /v1 URL; stopped at the end."""
    exe = Path(sys.executable).parent / "transformers"
    port = _free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as f:
        proc = subprocess.Popen([str(exe), "serve", str(MODEL), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                 "--dtype", "float32"], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"transformers serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from rlaifv.images import load_image
    from rlaifv.records import Prompt
    from rlaifv.sandbox.prompts import write_sandbox_prompts
    from rlaifv.store import read_records

    path = write_sandbox_prompts(tmp_path_factory.mktemp("prompts"), N_PROMPTS)
    ps = list(read_records(path, Prompt))
    return path, ps, [load_image(p, path.parent) for p in ps]


def test_greedy_texts_equal_hf_backend(server, prompts):
    from rlaifv.backends.base import Decoding, EndpointOptions
    from rlaifv.backends.hf import HFBackend
    from rlaifv.backends.openai_server import OpenAIBackend
    from rlaifv.models.load import load_vlm

    _, ps, images = prompts
    questions = [p.question for p in ps]
    greedy = [Decoding(0.0, 1.0, MAX_NEW)]
    hf = HFBackend(*load_vlm(str(MODEL))).sample(images, questions, [[0]] * len(ps), greedy)
    served = OpenAIBackend(EndpointOptions(base_url=server, model=str(MODEL)), stage="sample").sample(images, questions, [[0]] * len(ps), greedy)
    pairs = [(a[0], b[0]) for a, b in zip(hf, served)]
    assert all(a.text for a, _ in pairs) and len({a.text for a, _ in pairs}) > 1  # real, prompt-dependent answers
    assert [b for _, b in pairs] == [a for a, _ in pairs], "\n".join(f"hf {a}\nserved {b}" for a, b in pairs if a != b)


def test_ignored_n_is_detected_and_reported(server, prompts):
    from rlaifv.backends.base import Decoding, EndpointOptions
    from rlaifv.backends.openai_server import OpenAIBackend

    _, ps, images = prompts
    be = OpenAIBackend(EndpointOptions(base_url=server, model=str(MODEL), use_n=True), stage="sample")
    d = Decoding(0.7, 1.0, 16)
    with pytest.warns(UserWarning, match="ignored n=2"):
        out = be.sample(images[:2], [p.question for p in ps[:2]], [[1, 2], [3, 4]], [d, d])
    counts = be.counts()
    assert counts["n_fallbacks"] == 1 and counts["requests_sample_n"] == 1 and counts["requests_sample"] == 4
    assert be.capabilities().sample_n is False and "ignored n=2" in be.capabilities().notes[0]
    assert counts["identical_candidates_prompts"] == sum(len({g.text for g in row}) == 1 for row in out)


def test_cli_sample_and_conquer_through_the_server(server, prompts, tmp_path, rlaifv_bin):
    from rlaifv.records import Candidate, PolarQuestion
    from rlaifv.store import read_records

    path, ps, _ = prompts
    out = tmp_path / "candidates"
    cmd = rlaifv_bin + ["sample", "--prompts", str(path), "--out", str(out), "--model", str(MODEL), "--n", "2", "--max-new-tokens", "16",
                        "--backend", "openai", "--base-url", server]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"sample via openai: {2 * N_PROMPTS} request(s) sent" in proc.stdout
    cands = list(read_records(out, Candidate))
    assert len(cands) == 2 * N_PROMPTS and all(c.text and c.decoding["backend"] == "openai" for c in cands)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["requests"] == 2 * N_PROMPTS and summary["backend"] == "openai"

    qs = tmp_path / "questions.jsonl"
    qs.write_text(json.dumps(PolarQuestion(f"{ps[0].prompt_id}#0/0", "There is a circle.", "Is there a circle? Please answer yes or no.").to_dict()) + "\n")
    conq = rlaifv_bin + ["conquer", "--questions", str(qs), "--prompts", str(path), "--out", str(tmp_path / "scores"), "--model", str(MODEL),
                         "--backend", "openai", "--base-url", server]
    proc = subprocess.run(conq, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "capability 'logprobs'" in lines[0], proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
