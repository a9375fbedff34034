"""Resume integrity of a stage folder: input fingerprints, changed inputs, retried rejects.

A rerun skips inputs listed in ``progress.jsonl``. That is only right while the input is the
same one that was processed: an edited question or a replaced image under an old prompt id
would otherwise keep its old outputs (and ``feedback`` would pair old answers with new
questions). So when an input is marked done, its content fingerprint goes to
``inputs.jsonl`` (``{"key", "sha256"}``, appended and fsync'd before its progress line); on
resume each done input is fingerprinted again and a changed one is refused with a line naming
it, or, when the user asks (``--redo-changed``), its outputs are dropped and it is redone.

Rejected inputs are carried over by a rerun (never retried silently); ``--retry-rejects`` moves
their entries aside to ``rejects.retried-<time>.jsonl`` (kept, not deleted) so they are retried.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from .records import Prompt, Record
from .store import (LOCK_NAME, REJECTS_NAME, RecordStore, RejectsFile, StoreError, _fsync_dir, _list_shards)

log = logging.getLogger(__name__)
I = TypeVar("I")
FINGERPRINTS_NAME = "inputs.jsonl"
_PROGRESS_NAME = "progress.jsonl"  # runner.PROGRESS_NAME (runner imports this module)
_REDO_SUFFIX, _OLD_SUFFIX, _COMPLETE = ".redo", ".redo-old", ".redo-complete"
MAX_NAMED = 5  # changed inputs named in the one-line error


@dataclass
class ResumeOptions:
    """What a rerun does about changed inputs and earlier rejects (CLI ``--redo-changed``, ``--retry-rejects``)."""

    redo_changed: bool = False  # redo done inputs whose content changed (else: refuse, naming them)
    retry_rejects: bool = False  # retry inputs an earlier run rejected (their old entries are kept aside)


# ----------------------------------------------------------------------------- fingerprints


def content_fingerprint(*parts: Any) -> str:
    """sha256 over parts: bytes as they are, anything else as canonical JSON."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode()
        h.update(len(data).to_bytes(8, "big"))  # length-delimited: moving bytes between parts shows
        h.update(data)
    return "sha256:" + h.hexdigest()


def record_fingerprint(rec: Any) -> str | None:
    """The content fingerprint of a record's fields (None for inputs that are not records)."""
    return content_fingerprint(rec.to_dict()) if isinstance(rec, Record) else None


def prompt_fingerprint(prompt: Prompt, base_dir: Path | None, *extra: Any) -> str:
    """sha256 of what a prompt's outputs depend on: its question and image bytes (+ ``extra``).

    The image path is left out (a moved image folder with the same bytes is the same input);
    an unreadable image fingerprints as its error, so a prompt whose image vanished shows as changed.
    """
    from .images import ImageError, image_bytes_of

    try:
        image: Any = image_bytes_of(prompt, base_dir)
    except ImageError as e:
        image = f"unreadable image: {e}"
    return content_fingerprint(prompt.question, image, *extra)


def read_fingerprints(folder: Path) -> dict[str, str]:
    """key -> fingerprint stored in ``folder/inputs.jsonl`` (the last entry of a key wins)."""
    path = Path(folder) / FINGERPRINTS_NAME
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a kill: that batch was not marked done either
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            found[row["key"]] = row.get("sha256")
    return found


class FingerprintLog:
    """Append-only, fsync'd ``inputs.jsonl``: written just before the progress lines it covers."""

    def __init__(self, folder: Path, fingerprint_of: Callable[[str], str | None]) -> None:
        self.path, self.fingerprint_of = Path(folder) / FINGERPRINTS_NAME, fingerprint_of
        _cut_torn(self.path)

    def mark(self, keys: Sequence[str]) -> None:
        prints = [(k, self.fingerprint_of(k)) for k in keys]
        rows = [json.dumps({"key": k, "sha256": fp}) + "\n" for k, fp in prints if fp]
        if not rows:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(rows))
            f.flush()
            os.fsync(f.fileno())


def _cut_torn(path: Path) -> None:
    """Drop a last line cut short by a kill, so appends start on a fresh line."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                os.fsync(f.fileno())


def changed_inputs(folder: Path, current: dict[str, str | None], done: Iterable[str]) -> list[str]:
    """Done keys whose stored fingerprint differs from ``current`` (keys without one are not judged), in input order."""
    stored, done = read_fingerprints(folder), set(done)
    return [k for k, fp in current.items() if k in done and stored.get(k) and fp and stored[k] != fp]


def changed_message(stage: str, folder: Path, changed: Sequence[str], redo_flag: str = "--redo-changed") -> str:
    """One line naming the changed inputs and how to proceed."""
    named = ", ".join(repr(k) for k in changed[:MAX_NAMED]) + (f" and {len(changed) - MAX_NAMED} more" if len(changed) > MAX_NAMED else "")
    return (f"{stage}: {len(changed)} input(s) changed since they were processed into {folder}: {named}; "
            f"rerun with {redo_flag} to redo them (their old outputs are dropped), or use a new output folder")


# ----------------------------------------------------------------------------- redo


def recover_redo(out: Path) -> None:
    """Finish or undo a ``drop_outputs`` swap cut short by a kill (call before using ``out``)."""
    new, old = out.with_name(out.name + _REDO_SUFFIX), out.with_name(out.name + _OLD_SUFFIX)
    if not out.exists() and (new / _COMPLETE).exists():
        os.replace(new, out)
        _fsync_dir(out.parent)
    if out.exists():
        shutil.rmtree(new, ignore_errors=True)  # an unfinished copy: the original is intact, redo decides again
        shutil.rmtree(old, ignore_errors=True)
        (out / _COMPLETE).unlink(missing_ok=True)


def drop_outputs(out: Path, record_type: type[Record], keys: set[str], record_key: Callable[[Any], str]) -> int:
    """Rewrite the stage folder without the outputs, progress and fingerprints of ``keys``.

    Crash-safe: a complete copy is built in ``out.redo`` (marked complete last), then swapped
    in by two renames; ``recover_redo`` finishes a swap a kill interrupted. Returns the number
    of output records dropped.
    """
    new = out.with_name(out.name + _REDO_SUFFIX)
    shutil.rmtree(new, ignore_errors=True)
    with RecordStore(out, record_type) as src:  # holds out's lock: no other writer meanwhile
        kept = [r for r in src if record_key(r) not in keys]
        dropped = len(src) - len(kept)
        with RecordStore(new, record_type) as dst:
            dst.write(kept)
        shards = {p.name for _, _, p in _list_shards(out)}
        for p in out.iterdir():
            if p.name in shards or p.name == LOCK_NAME or not p.is_file():
                continue
            if p.name in (_PROGRESS_NAME, FINGERPRINTS_NAME):
                _copy_lines_without(p, new / p.name, keys)
            else:
                shutil.copy2(p, new / p.name)
        (new / _COMPLETE).write_text("")
        _fsync_dir(new)
    old = out.with_name(out.name + _OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(new, out)
    _fsync_dir(out.parent)
    recover_redo(out)
    return dropped


def _copy_lines_without(src: Path, dst: Path, keys: set[str]) -> None:
    """Copy a progress / fingerprint JSONL file, leaving out the lines of ``keys``."""
    keep = []
    for line in src.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = row.get("key") if isinstance(row, dict) else row
        if key not in keys:
            keep.append(line + "\n")
    with dst.open("w", encoding="utf-8") as f:
        f.write("".join(keep))
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- rejects


def set_rejects_aside(folder: Path, keys: Iterable[str]) -> Path | None:
    """Move the rejects of inputs ``keys`` out of ``folder/rejects.jsonl`` so a rerun retries them.

    The whole old file is kept as ``rejects.retried-<UTC time>.jsonl``; entries of other ids
    (e.g. a malformed input line, which is re-read every run) stay. Returns the kept copy.
    """
    path = Path(folder) / REJECTS_NAME
    if not path.exists():
        return None
    keys = set(keys)
    entries = RejectsFile(folder).entries()
    if not any(e.get("id") in keys for e in entries):
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"rejects.retried-{stamp}.jsonl")
    shutil.copy2(path, aside)
    tmp = path.with_name(REJECTS_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries if e.get("id") not in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    log.warning("%s: %d rejected input(s) will be retried; the old rejects are kept in %s",
                folder, sum(e.get("id") in keys for e in entries), aside.name)
    return aside


def carried_rejects(rejects: RejectsFile, keys: Iterable[str]) -> int:
    """How many of the inputs ``keys`` an earlier run rejected (a rerun carries them over)."""
    ids = rejects.rejected_ids()
    return sum(1 for k in set(keys) if k in ids)


def merge_fingerprints(dirs: Sequence[Path], out: Path) -> None:
    """Rank folders' ``inputs.jsonl`` -> ``out/inputs.jsonl`` (written atomically)."""
    merged: dict[str, str] = {}
    for d in dirs:
        merged.update(read_fingerprints(d))
    tmp = out / (FINGERPRINTS_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"key": k, "sha256": v}) + "\n" for k, v in merged.items()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / FINGERPRINTS_NAME)


def check_resume(stage: str, out: Path, inputs: Sequence[I], key: Callable[[I], str],
                 fingerprint: Callable[[I], str | None], done: Iterable[str], redo_changed: bool = False,
                 record_type: type[Record] | None = None, record_key: Callable[[Any], str] | None = None) -> list[str]:
    """Fingerprint the done inputs; refuse (StoreError) if any changed, or with ``redo_changed``
    drop their outputs so the run redoes them. Returns the keys redone."""
    done = set(done)
    current = {key(x): fingerprint(x) for x in inputs if key(x) in done}
    changed = changed_inputs(out, current, done)
    if not changed:
        return []
    if not redo_changed:
        raise StoreError(changed_message(stage, out, changed))
    if record_type is None or record_key is None:
        raise StoreError(f"{stage}: cannot redo changed inputs here (no map from outputs to inputs); use a new output folder")
    dropped = drop_outputs(out, record_type, set(changed), record_key)
    log.warning("%s: redoing %d changed input(s) (%d old output records dropped)", stage, len(changed), dropped)
    return changed
