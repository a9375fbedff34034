"""Reference log-probs, computed once per (reference model, pair data) and cached on disk.

Why: the paper precomputes the reference log-probs once per iteration with the iteration's
starting model (reference code ``muffin_inference_logp.py``) so that no reference forward runs
during training; TRL refuses ``precompute_ref_log_probs`` for image data (offline-assets.md,
Sec. 6). Here the starting model scores every pair once, and no reference model is in memory
while training.

How: pairs are grouped by prompt; the image + templated prompt is encoded once per prompt
(``models.prefix``) and every distinct answer of that prompt (chosen and rejected, answer +
EOS as ``chat.collate`` supervises them) is scored on the shared KV cache. The result is
``<cache_root>/<key>/ref_logps.jsonl`` (one line per pair, appended and fsync'd per prompt so
a killed run keeps what it finished) plus ``meta.json`` written when complete. ``key`` is a
sha256 of the reference model's weights + config and of the pair data (pair ids, question,
answers, image bytes digest), so a rerun, a resumed run or another run on the same data
reuses it, and any change of model or data computes anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..images import image_bytes_of, load_image
from ..models.chat import answer_ids, encode_prompt
from ..models.load import resolve_model_path
from ..models.prefix import score_suffix_tokens
from ..records import PreferencePair, Prompt
from ..runner import _cut_torn_tail
from ..store import package_versions

LOGPS_NAME = "ref_logps.jsonl"
META_NAME = "meta.json"


def model_fingerprint(name: str | Path) -> str:
    """sha256 over a checkpoint folder's weight and config files (names and bytes)."""
    path = resolve_model_path(name)
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in {".safetensors", ".bin", ".json", ".model"}))
    if not any(p.suffix in {".safetensors", ".bin"} for p in files):
        raise FileNotFoundError(f"{path}: no weight files (*.safetensors / *.bin) to fingerprint")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def pairs_fingerprint(pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt], base_dir: Path | None) -> str:
    """sha256 over what the reference log-probs depend on: ids, questions, answers, image bytes."""
    h = hashlib.sha256()
    digests: dict[str, str] = {}
    for p in pairs:
        if p.prompt_id not in digests:
            digests[p.prompt_id] = hashlib.sha256(image_bytes_of(prompts[p.prompt_id], base_dir)).hexdigest()
        h.update(json.dumps([p.id, p.question, p.chosen, p.rejected, digests[p.prompt_id]]).encode())
    return h.hexdigest()


def cache_key(model_fp: str, pairs_fp: str) -> str:
    """The folder name of a cache entry: first 24 hex digits of sha256(model fp, pairs fp)."""
    return hashlib.sha256((model_fp + pairs_fp).encode()).hexdigest()[:24]


def _read_done(path: Path) -> dict[str, dict]:
    """Lines already written (a torn last line from a kill is cut first)."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    _cut_torn_tail(path)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        done[row["pair_id"]] = row
    return done


def compute_reference_logps(model, processor, pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt],
                            base_dir: Path | None, out_file: Path, batch_size: int = 16,
                            progress: Callable[[int, int, str], None] | None = None) -> dict[str, dict]:
    """Score every pair's chosen and rejected answer under ``model`` (shared prefix per prompt).

    Appends one JSON line per pair to ``out_file`` (``pair_id``, ``chosen_logp``,
    ``rejected_logp``, ``chosen_tokens``, ``rejected_tokens``) and skips pairs already there.
    """
    done = _read_done(out_file)
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    for p in pairs:
        by_prompt[p.prompt_id].append(p)
    todo = [pid for pid, ps in by_prompt.items() if any(p.id not in done for p in ps)]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("a") as f:
        for i, pid in enumerate(todo):
            prompt = prompts[pid]
            group = by_prompt[pid]
            texts = sorted({t for p in group for t in (p.chosen, p.rejected)})
            # the pixel limit was applied by data.prepare_examples (the configured one): not again here
            prefix = encode_prompt(processor, load_image(prompt, base_dir, max_pixels=0), group[0].question)
            logps = score_suffix_tokens(model, prefix, [answer_ids(processor, t) for t in texts], batch_size)
            by_text = {t: (float(lp.sum()), int(lp.numel())) for t, lp in zip(texts, logps)}
            for p in group:
                (c, ct), (r, rt) = by_text[p.chosen], by_text[p.rejected]
                row = {"pair_id": p.id, "chosen_logp": c, "rejected_logp": r, "chosen_tokens": ct, "rejected_tokens": rt}
                done[p.id] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if progress:
                progress(i + 1, len(todo), "")
    return done


def cached_reference_logps(ref_model: str, pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt],
                           base_dir: Path | None, cache_root: Path, load: Callable[[str], tuple],
                           batch_size: int = 16, progress: Callable[[int, int, str], None] | None = None) -> tuple[dict[str, dict], Path, bool]:
    """(pair_id -> reference log-probs, cache folder, hit) -- computed only on a cache miss.

    ``load(name) -> (model, processor)`` is called only when something must be computed, and
    the model is dropped afterwards.
    """
    model_fp, pairs_fp = model_fingerprint(ref_model), pairs_fingerprint(pairs, prompts, base_dir)
    folder = Path(cache_root) / cache_key(model_fp, pairs_fp)
    logps_file, meta_file = folder / LOGPS_NAME, folder / META_NAME
    if meta_file.exists():
        done = _read_done(logps_file)
        if all(p.id in done for p in pairs):
            return done, folder, True
    model, processor = load(ref_model)
    model.eval()
    done = compute_reference_logps(model, processor, pairs, prompts, base_dir, logps_file, batch_size, progress)
    del model
    meta = {"ref_model": str(ref_model), "model_fingerprint": model_fp, "pairs": len(pairs),
            "pairs_fingerprint": pairs_fp, "versions": package_versions()}
    tmp = meta_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_file)
    return done, folder, False
