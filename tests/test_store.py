"""Tests for rlaifv.store: crash-safe shards, resume, manifest, rejects, readers, sharding."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaifv.records import Candidate, Prompt, RecordError
from rlaifv.store import (
    RecordStore,
    RejectsFile,
    StoreError,
    fingerprint,
    handle_bad,
    merge_stores,
    read_manifest,
    read_records,
    shard_of,
    sharded,
    write_manifest,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def cand(i: int) -> Candidate:
    return Candidate(prompt_id=f"p{i:05d}", sample_index=0, seed=i, text=f"answer number {i}")


def line(rec) -> str:
    return json.dumps(rec.to_dict(), ensure_ascii=False) + "\n"


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("shard-"))


# ----------------------------------------------------------------------------- RecordStore


def test_roundtrip_typed_records_in_write_order(tmp_path: Path) -> None:
    recs = [
        Prompt("b", "What is red?", image="imgs/b.png", metadata={"split": "train", "n": [1, 2]}),
        Prompt("a", "Ünïcode question?", image_bytes=b"\x89PNG\r\n\x00\xff"),
        Prompt("c", "Third?", image="c.jpg"),
    ]
    with RecordStore(tmp_path / "out", Prompt, shard_size=2) as st:
        assert st.write(recs) == 3
        assert len(st) == 3
    with RecordStore(tmp_path / "out", Prompt) as st:
        got = list(st)
        assert len(st) == 3
        assert st.done_ids() == {"a", "b", "c"}
    assert got == recs  # dataclass equality, bytes included, order = write order
    assert got[1].image_bytes == b"\x89PNG\r\n\x00\xff"
    assert names(tmp_path / "out") == ["shard-00000.jsonl", "shard-00001.jsonl"]


def test_shard_rotation_and_atomic_finish(tmp_path: Path) -> None:
    d = tmp_path / "out"
    st = RecordStore(d, Candidate, shard_size=3)
    st.write([cand(0), cand(1)])
    assert names(d) == ["shard-00000.jsonl.partial"]
    st.write([cand(2), cand(3)])
    assert names(d) == ["shard-00000.jsonl", "shard-00001.jsonl.partial"]
    assert (d / "shard-00000.jsonl").read_text() == "".join(line(cand(i)) for i in range(3))
    assert (d / "shard-00001.jsonl.partial").read_text() == line(cand(3))
    st.close()
    assert names(d) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    with RecordStore(d, Candidate, shard_size=3) as st:
        st.write([cand(4)])
        assert names(d) == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl.partial"]
        assert [c.seed for c in st] == [0, 1, 2, 3, 4]


def test_resume_skips_done_ids(tmp_path: Path) -> None:
    d = tmp_path / "out"
    with RecordStore(d, Candidate) as st:
        st.write(cand(i) for i in range(5))
    processed = []
    with RecordStore(d, Candidate) as st:
        done = st.done_ids()
        assert done == {f"p{i:05d}#0" for i in range(5)}
        for i in range(8):
            c = cand(i)
            if c.id not in done:
                processed.append(i)
                st.write([c])
    assert processed == [5, 6, 7]
    with RecordStore(d, Candidate) as st:
        assert [c.seed for c in st] == list(range(8))


def test_duplicate_id_on_write_names_the_id(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "out", Candidate) as st:
        st.write([cand(1)])
        with pytest.raises(RecordError, match=r"p00001#0.*duplicate"):
            st.write([cand(2), cand(1)])
        with pytest.raises(RecordError, match="p00003#0"):
            st.write([cand(3), cand(3)])
        assert [c.seed for c in st] == [1, 2, 3]  # records before the bad one were kept
        with pytest.raises(RecordError, match="expected a candidate record"):
            st.write([Prompt("x", "q?", image="x.png")])


def test_torn_last_line_is_truncated_and_shard_continued(tmp_path: Path, caplog) -> None:
    d = tmp_path / "out"
    d.mkdir()
    partial = d / "shard-00000.jsonl.partial"
    good = line(cand(0)) + line(cand(1))
    partial.write_text(good + line(cand(2))[:25])  # a write cut short by a kill
    with caplog.at_level(logging.WARNING, logger="rlaifv.store"):
        st = RecordStore(d, Candidate, shard_size=10)
    assert "shard-00000.jsonl.partial" in caplog.text and "torn" in caplog.text
    assert partial.read_text() == good
    assert len(st) == 2 and st.done_ids() == {"p00000#0", "p00001#0"}
    st.write([cand(2)])
    st.close()
    assert (d / "shard-00000.jsonl").read_text() == good + line(cand(2))


def test_garbage_complete_last_line_is_truncated(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (d / "shard-00000.jsonl.partial").write_bytes(line(cand(0)).encode() + b"\x00\x00\x00\n")
    with RecordStore(d, Candidate) as st:
        assert [c.seed for c in st] == [0]


def test_corruption_outside_a_torn_tail_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    (d / "shard-00000.jsonl.partial").write_text(line(cand(0)) + "{oops\n" + line(cand(1)))
    with pytest.raises(StoreError, match=r"shard-00000.jsonl.partial:2"):
        RecordStore(d, Candidate)
    e = tmp_path / "b"
    e.mkdir()
    (e / "shard-00000.jsonl").write_text(line(cand(0)) + line(cand(1))[:10])  # finished shards are never torn
    with pytest.raises(StoreError, match=r"shard-00000.jsonl:2"):
        RecordStore(e, Candidate)
    f = tmp_path / "c"
    f.mkdir()
    (f / "shard-00000.jsonl.partial").write_text(line(cand(0)))
    (f / "shard-00001.jsonl").write_text(line(cand(1)))  # a partial shard is always the last one
    with pytest.raises(StoreError, match="inconsistent shard files"):
        RecordStore(f, Candidate)


def test_full_partial_left_by_a_kill_before_rename_is_finished(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (d / "shard-00000.jsonl.partial").write_text(line(cand(0)) + line(cand(1)))
    with RecordStore(d, Candidate, shard_size=2) as st:
        assert names(d) == ["shard-00000.jsonl"]
        st.write([cand(2)])
        assert names(d) == ["shard-00000.jsonl", "shard-00001.jsonl.partial"]


def test_second_writer_on_same_folder_is_refused(tmp_path: Path) -> None:
    st = RecordStore(tmp_path / "out", Candidate)
    with pytest.raises(StoreError, match="in use"):
        RecordStore(tmp_path / "out", Candidate)
    st.close()
    RecordStore(tmp_path / "out", Candidate).close()


CHILD = """
import sys
from rlaifv.records import Candidate
from rlaifv.store import RecordStore
st = RecordStore(sys.argv[1], Candidate, shard_size=100)
for i in range(10000):
    st.write([Candidate(prompt_id=f"p{i:05d}", sample_index=0, seed=i, text=f"answer number {i}")])
st.close()
"""


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(killed)], env=env)
    deadline = time.monotonic() + 15
    while not (killed / "shard-00000.jsonl").exists():  # wait for its first finished shard
        assert proc.poll() is None, "writer exited before it could be killed"
        assert time.monotonic() < deadline, "writer produced no shard in time"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL

    for p in killed.glob("shard-*"):  # finished shards: complete lines only
        if not p.name.endswith(".partial"):
            assert p.read_bytes().endswith(b"\n")
            assert len([json.loads(x) for x in p.read_text().splitlines()]) == 100
    with RecordStore(killed, Candidate, shard_size=100) as st:
        seeds = [c.seed for c in st]
        k = len(seeds)
        assert 100 <= k < 10000 and seeds == list(range(k))  # an unbroken prefix survived
        done = st.done_ids()
        st.write(c for c in map(cand, range(10000)) if c.id not in done)
    with RecordStore(ref, Candidate, shard_size=100) as st:
        st.write(map(cand, range(10000)))
    assert names(killed) == names(ref) == [f"shard-{i:05d}.jsonl" for i in range(100)]
    for name in names(ref):
        assert (killed / name).read_bytes() == (ref / name).read_bytes(), name


# ----------------------------------------------------------------------------- manifest


def test_manifest_records_run_and_rejects_config_change(tmp_path: Path) -> None:
    inp = tmp_path / "prompts.jsonl"
    inp.write_bytes(b'{"x": 1}\n')
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"A")
    out = tmp_path / "out"
    m1 = write_manifest(out, "sample", {"model": "m1", "n": 4, "dirs": ("a", "b")}, {"seed": 7}, [inp, folder])
    on_disk = read_manifest(out)
    assert on_disk == m1
    assert on_disk["stage"] == "sample" and on_disk["config"] == {"model": "m1", "n": 4, "dirs": ["a", "b"]}
    assert on_disk["seeds"] == {"seed": 7} and on_disk["hostname"]
    assert set(on_disk["versions"]) >= {"python", "rlaifv", "torch", "transformers", "trl", "peft",
                                        "accelerate", "datasets"}
    assert on_disk["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert on_disk["inputs"][0] == {"path": str(inp.resolve()),
                                    "sha256": "sha256:" + hashlib.sha256(b'{"x": 1}\n').hexdigest()}
    # same config (tuple vs list is the same once stored) -> resume is fine, created is kept
    m2 = write_manifest(out, "sample", {"model": "m1", "n": 4, "dirs": ["a", "b"]}, {"seed": 7}, [inp, folder])
    assert m2["created"] == m1["created"]
    with pytest.raises(StoreError, match=r"config\.model: 'm1' -> 'm2'.*new output folder, or delete .*out to start over"):
        write_manifest(out, "sample", {"model": "m2", "n": 4, "dirs": ["a", "b"]}, {"seed": 7}, [inp])
    with pytest.raises(StoreError, match=r"seeds\.seed: 7 -> 8"):
        write_manifest(out, "sample", {"model": "m1", "n": 4, "dirs": ["a", "b"]}, {"seed": 8}, [inp])
    with pytest.raises(StoreError, match=r"stage: 'sample' -> 'ask'"):
        write_manifest(out, "ask", {"model": "m1", "n": 4, "dirs": ["a", "b"]}, {"seed": 7}, [inp])
    assert read_manifest(out)["config"]["model"] == "m1"  # a refused resume leaves it alone


def test_folder_fingerprint_sees_content_and_names(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"12")
    (d / "sub" / "b").write_bytes(b"3")
    f0 = fingerprint(d)
    assert f0 == fingerprint(d) and f0.startswith("sha256:")
    (d / "a").write_bytes(b"1")
    (d / "sub" / "b").write_bytes(b"23")  # same concatenated bytes, other split
    assert fingerprint(d) != f0
    with pytest.raises(StoreError, match="does not exist"):
        fingerprint(tmp_path / "nope")


# ----------------------------------------------------------------------------- rejects


def test_rejects_file_persists_ids_and_policy(tmp_path: Path) -> None:
    with RejectsFile(tmp_path, stage="sample") as rej:
        handle_bad("p1", "image missing", "skip", rej, record_id="p1")
        handle_bad("in.jsonl:4", "invalid JSON", "skip", rej)
        handle_bad("in.jsonl:4", "invalid JSON", "skip", rej)  # a rerun meets it again
        with pytest.raises(RecordError, match=r"^p2: too long$"):
            handle_bad("p2", "too long", "raise", rej, record_id="p2")
        with pytest.raises(ValueError, match="on_error"):
            handle_bad("p3", "x", "ignore", rej)  # type: ignore[arg-type]
    lines = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert lines == [
        {"id": "p1", "source": "p1", "reason": "image missing", "stage": "sample"},
        {"id": None, "source": "in.jsonl:4", "reason": "invalid JSON", "stage": "sample"},
    ]
    with (tmp_path / "rejects.jsonl").open("a") as f:
        f.write('{"id": "p9", "sou')  # torn by a kill
    assert RejectsFile(tmp_path).rejected_ids() == {"p1"}
    assert (tmp_path / "rejects.jsonl").read_text().count("\n") == 2


# ----------------------------------------------------------------------------- readers


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


P = '{"prompt_id": "%s", "question": "q %s?", "image": "%s.png"}'


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "in.jsonl", [P % ("a", "a", "a"), '{"prompt_id": "b", ', "", P % ("c", "c", "c")])
    with pytest.raises(RecordError, match=rf"{f}:2: invalid JSON"):
        list(read_records(f, Prompt))
    rej = RejectsFile(tmp_path / "out", stage="ingest")
    assert [p.id for p in read_records(f, Prompt, "skip", rej)] == ["a", "c"]
    assert rej.entries()[0]["source"] == f"{f}:2" and rej.entries()[0]["stage"] == "ingest"


def test_read_duplicate_id_names_id_and_both_lines(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "in.jsonl", [P % ("a", 1, "a"), P % ("b", 2, "b"), P % ("a", 3, "x")])
    with pytest.raises(RecordError, match=rf"{f}:3: duplicate id 'a' \(first at {f}:1\)"):
        list(read_records(f, Prompt))
    rej = RejectsFile(tmp_path / "out")
    got = list(read_records(f, Prompt, "skip", rej))
    assert [(p.id, p.question) for p in got] == [("a", "q 1?"), ("b", "q 2?")]  # first one wins
    assert len(rej.entries()) == 1 and rej.entries()[0]["id"] is None  # the id itself is not "done"


def test_read_invalid_record_has_file_line_prefix(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "in.jsonl", [P % ("a", 1, "a"), '{"prompt_id": "b", "image": "b.png"}',
                                            '{"prompt_id": "c", "question": "q?", "image_bytes": "%%%"}'])
    with pytest.raises(RecordError, match=rf"^{f}:2: prompt 'b': missing field\(s\) question$"):
        list(read_records(f, Prompt))
    rej = RejectsFile(tmp_path / "out")
    assert [p.id for p in read_records(f, Prompt, "skip", rej)] == ["a"]
    assert [e["source"] for e in rej.entries()] == [f"{f}:2", f"{f}:3"]
    assert "base64" in rej.entries()[1]["reason"]


def test_read_folder_of_shards_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [Prompt("a", "q a?", image="a.png", metadata={"k": 1}), Prompt("b", "q b?", image_bytes=b"\x00\x01")]
    with RecordStore(tmp_path / "st", Prompt, shard_size=1) as st:
        st.write(recs)
    assert list(read_records(tmp_path / "st", Prompt)) == recs
    table = pa.Table.from_pylist([{"prompt_id": "a", "question": "q a?", "image": "a.png", "image_bytes": None,
                                   "metadata": None},
                                  {"prompt_id": "b", "question": "q b?", "image": None, "image_bytes": b"\x00\x01",
                                   "metadata": None}])
    pq.write_table(table, tmp_path / "p.parquet")
    got = list(read_records(tmp_path / "p.parquet", Prompt))
    assert got == [Prompt("a", "q a?", image="a.png"), Prompt("b", "q b?", image_bytes=b"\x00\x01")]
    with pytest.raises(RecordError, match=r"p\.parquet:1: candidate 'a': missing field"):
        list(read_records(tmp_path / "p.parquet", Candidate))
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "a", "question": "q?", "image": "a.png"},
                                         {"prompt_id": "b", "question": " ", "image": "b.png"}]), tmp_path / "e.parquet")
    with pytest.raises(RecordError, match=r"e\.parquet:2: prompt 'b': empty question"):
        list(read_records(tmp_path / "e.parquet", Prompt))


# ----------------------------------------------------------------------------- multi-process


def test_sharded_splits_deterministically_and_merge_restores_input_order(tmp_path: Path) -> None:
    prompts = [f"q{i}" for i in range(40)]
    items = [Candidate(prompt_id=p, sample_index=s, seed=s, text="t") for p in prompts for s in range(2)]
    parts = [list(sharded(items, r, 2, key=lambda c: c.prompt_id)) for r in range(2)]
    assert sorted(c.id for part in parts for c in part) == sorted(c.id for c in items)
    assert all(len(part) > 10 for part in parts)  # both ranks got work
    assert shard_of("q0", 2) == 1 and shard_of("q1", 2) == 0  # pinned: sha256-based, not hash()
    for r, part in enumerate(parts):
        with RecordStore(tmp_path / f"rank{r}", Candidate) as st:
            st.write(reversed(part))  # ranks finish prompts in their own order
        RejectsFile(tmp_path / f"rank{r}").add(f"x{r}", f"x{r}", "bad", "sample")
    n = merge_stores([tmp_path / "rank0", tmp_path / "rank1"], tmp_path / "merged", Candidate,
                     order=prompts, key=lambda c: c.prompt_id)
    assert n == 80
    with RecordStore(tmp_path / "merged", Candidate) as st:
        assert [c.prompt_id for c in st] == [p for p in prompts for _ in range(2)]
    assert RejectsFile(tmp_path / "merged").rejected_ids() == {"x0", "x1"}
    with pytest.raises(StoreError, match="not empty"):
        merge_stores([tmp_path / "rank0"], tmp_path / "merged", Candidate)
    with pytest.raises(ValueError, match="rank"):
        list(sharded(items, 2, 2))


def test_run_made_before_a_key_existed_resumes_when_the_key_keeps_the_old_behaviour(tmp_path):
    """Config keys added later (store.ADDED_LATER) at their old-behaviour value do not block a resume;
    any other value of them, or a changed existing key, still does."""
    from rlaifv.store import StoreError, write_manifest

    old = {"model": "m", "conquer": {"mode": "direct", "batch_size": 32}, "lr": 1e-4}
    write_manifest(tmp_path, "feedback", old, {"seed": 0}, [])
    new = {"model": "m", "conquer": {"mode": "direct", "batch_size": 32, "prefix_mode": "packed", "pack_tokens": 2048},
           "lr": 1e-4, "mixed_precision": "no", "save_total_limit": None}
    write_manifest(tmp_path, "feedback", new, {"seed": 0}, [])  # resumes
    with pytest.raises(StoreError, match="prefix_mode"):
        write_manifest(tmp_path, "feedback", {**new, "conquer": {**new["conquer"], "prefix_mode": "naive"}}, {"seed": 0}, [])
    with pytest.raises(StoreError, match="mixed_precision"):
        write_manifest(tmp_path, "feedback", {**new, "mixed_precision": "bf16"}, {"seed": 0}, [])
