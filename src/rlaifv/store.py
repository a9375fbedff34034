"""Crash-safe storage of typed records, shared by every pipeline stage.

Stages run for hours and get killed, so output is append-only JSONL shards fsync'd after each
write batch: a kill loses at most the batch in flight, never finished output, and a rerun skips
``done_ids()``. ``manifest.json`` records what produced a folder so that resuming with another
config fails loudly instead of mixing two experiments; ``rejects.jsonl`` keeps refused records.
Folder layout: ``shard-00000.jsonl`` (finished, never modified), at most one last
``shard-00001.jsonl.partial`` (being written), ``manifest.json``, ``rejects.jsonl``, ``.lock``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import socket
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable, Generic, Iterable, Iterator, Literal, TypeVar

from .manifest_paths import changed_inputs, same_path
from .records import Prompt, Record, RecordError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
R = TypeVar("R", bound=Record)
PathLike = str | os.PathLike
Row = dict[str, Any]

MANIFEST_NAME, REJECTS_NAME, LOCK_NAME = "manifest.json", "rejects.jsonl", ".lock"
_SHARD_RE = re.compile(r"^shard-(\d+)\.jsonl(\.partial)?$")
VERSIONED_PACKAGES = ("rlaifv", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


class StoreError(RuntimeError):
    """A stage output folder cannot be used as asked (corrupt, locked, or from another config)."""


def _fsync_dir(directory: Path) -> None:
    """Make a rename/creation inside ``directory`` durable (POSIX needs the folder fsync'd)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _list_shards(directory: Path) -> list[tuple[int, bool, Path]]:
    """(index, is_partial, path) of every shard file, in write order."""
    matches = [(_SHARD_RE.match(p.name), p) for p in directory.iterdir()] if directory.is_dir() else []
    return sorted((int(m.group(1)), m.group(2) is not None, p) for m, p in matches if m)


def _parse_line(raw: bytes) -> Row:
    """Decode one stored JSONL line; ValueError if torn (no newline) or not a JSON object."""
    if not raw.endswith(b"\n"):
        raise ValueError("line has no trailing newline (torn write)")
    try:
        d = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    return d


def _scan_jsonl(path: Path, visit: Callable[[Row, str], None], allow_torn_tail: bool) -> int | None:
    """Call ``visit(row, "file:line")`` for each line of a file we wrote ourselves.

    A bad *last* line is the mark of a write cut short by a kill: with ``allow_torn_tail`` its
    byte offset is returned so the caller can cut it away. A bad line anywhere else means the
    file is corrupt, which no kill of ours can cause: StoreError.
    """
    bad: tuple[int, int, str] | None = None
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if bad is not None:
                raise StoreError(f"{path}:{bad[0]}: {bad[2]}; not the last line, so the file is corrupt")
            try:
                row = _parse_line(raw)
            except ValueError as e:
                bad = (lineno, offset, str(e))
            else:
                visit(row, f"{path}:{lineno}")
            offset += len(raw)
    if bad is not None and not allow_torn_tail:
        raise StoreError(f"{path}:{bad[0]}: {bad[2]}; finished files are never torn, so the file is corrupt")
    return None if bad is None else bad[1]


def _cut_tail(path: Path, offset: int) -> None:
    """Truncate a torn last line away (durably) and say so."""
    log.warning("%s: truncating a torn last line (%d bytes) left by an interrupted write",
                path, path.stat().st_size - offset)
    with path.open("r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())


def _decode(row: Row, record_type: type[R], label: str | None = None) -> R:
    """Build a typed record from a row; RecordError (prefixed with ``label``) if invalid."""
    try:
        kind = row.get("kind")
        if kind is not None and kind != record_type.kind:
            raise RecordError(f"record kind {kind!r} is not {record_type.kind!r}")
        return record_type.from_dict(row)
    except RecordError as e:
        if label is None:
            raise
        raise RecordError(f"{label}: {e}") from e


def _encode(rec: Record) -> bytes:
    """One JSONL line for a record; RecordError if it cannot be stored faithfully (NaN, objects)."""
    try:
        return (json.dumps(rec.to_dict(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise RecordError(f"{rec.kind} {rec.id!r}: cannot be written as JSON ({e})") from e


def _lock(directory: Path) -> IO[bytes]:
    """Take the folder's exclusive lock so two processes never append to the same shards."""
    fh = (directory / LOCK_NAME).open("ab")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        fh.close()
        raise StoreError(f"{directory} is in use by another writer (lock {LOCK_NAME} is held)") from e
    return fh


class RecordStore(Generic[R]):
    """A stage output folder of ``record_type`` records in append-only JSONL shards.

    ``write`` appends to ``shard-NNNNN.jsonl.partial`` and fsyncs at the end of the batch; a
    shard holding ``shard_size`` lines is fsync'd and atomically renamed to ``.jsonl``.
    Reopening cuts a torn last line from the partial shard and continues it. One writer per
    folder at a time (an flock on ``.lock``, released by the kernel if the process dies).
    """

    def __init__(self, directory: PathLike, record_type: type[R], shard_size: int = 1000) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.directory, self.record_type, self.shard_size = Path(directory), record_type, shard_size
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fh: IO[bytes] | None = _lock(self.directory)
        self._ids: set[str] = set()
        self._fh: IO[bytes] | None = None
        self._partial: Path | None = None  # the .partial shard being written, if any
        self._count = self._partial_lines = self._next_index = 0
        self._broken = False  # an OSError mid-write may have left a torn line: stop appending
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

    def _recover(self) -> None:
        """Load ids from existing shards; repair and adopt the partial shard, if any."""
        shards = _list_shards(self.directory)
        indices = [i for i, _, _ in shards]
        partials = [i for i, part, _ in shards if part]
        # at most one partial shard, and it is the last one: anything else is not our doing
        if len(partials) > 1 or (partials and partials[0] != max(indices)) or len(set(indices)) < len(indices):
            raise StoreError(f"{self.directory}: inconsistent shard files {[p.name for _, _, p in shards]}")
        for index, is_partial, path in shards:
            lines_before = self._count
            cut = _scan_jsonl(path, self._note, allow_torn_tail=is_partial)
            if cut is not None:
                _cut_tail(path, cut)
            self._next_index = index + (0 if is_partial else 1)
            if is_partial:
                self._partial, self._partial_lines = path, self._count - lines_before
        if self._partial_lines >= self.shard_size:  # killed between its last fsync and its rename
            self._finish_partial()

    def _note(self, row: Row, label: str) -> None:
        rec = _decode(row, self.record_type, label)
        if rec.id in self._ids:
            raise StoreError(f"{label}: duplicate id {rec.id!r} in stored output")
        self._ids.add(rec.id)
        self._count += 1

    def write(self, records: Iterable[R]) -> int:
        """Append records, then fsync; returns how many were written.

        RecordError on a duplicate id (stored or earlier in the batch), a record of another type
        or an invalid record; the records before it stay written (and fsync'd).
        """
        if self._lock_fh is None or self._broken:
            raise StoreError(f"{self.directory}: store is closed or an earlier write failed; reopen it")
        n = 0
        try:
            for rec in records:
                self._write_one(rec)
                n += 1
            self.flush()
        except OSError:
            self._broken = True
            raise
        except BaseException:
            self.flush()
            raise
        return n

    def _write_one(self, rec: R) -> None:
        if not isinstance(rec, self.record_type):
            raise RecordError(f"expected a {self.record_type.kind} record, got {type(rec).__name__}")
        rec.validate()
        if rec.id in self._ids:
            raise RecordError(f"{rec.kind} {rec.id!r}: duplicate id, already in {self.directory}")
        line = _encode(rec)
        if self._fh is None:
            self._open_partial()
        assert self._fh is not None
        self._fh.write(line)
        self._ids.add(rec.id)
        self._count += 1
        self._partial_lines += 1
        if self._partial_lines >= self.shard_size:
            self._finish_partial()

    def _open_partial(self) -> None:
        """Open (creating durably on first use) the partial shard for appending."""
        if self._partial is None:
            self._partial = self.directory / f"shard-{self._next_index:05d}.jsonl.partial"
            self._partial_lines = 0
        created = not self._partial.exists()
        self._fh = self._partial.open("ab")
        if created:
            _fsync_dir(self.directory)

    def flush(self) -> None:
        """Push written lines to disk (flush + fsync): after this they survive a kill."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def _finish_partial(self) -> None:
        """fsync the partial shard and atomically rename it to its finished name."""
        if self._partial is None:
            return
        if self._fh is None:  # adopted from a killed run: make it durable before the rename
            self._open_partial()
        self.flush()
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        if self._partial_lines == 0:
            self._partial.unlink()
        else:
            os.replace(self._partial, self._partial.with_suffix(""))
            self._next_index += 1
        _fsync_dir(self.directory)
        self._partial, self._partial_lines = None, 0

    def close(self) -> None:
        """Finish the current partial shard and release the folder lock. Idempotent."""
        try:
            if self._lock_fh is not None and not self._broken:
                self._finish_partial()
        finally:
            self._release()

    def _release(self) -> None:
        for fh in (self._fh, self._lock_fh):
            if fh is not None:
                fh.close()  # closing the lock file drops the flock
        self._fh = self._lock_fh = None

    def __enter__(self) -> RecordStore[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_ids(self) -> set[str]:
        """Ids already stored (finished and partial shards): a rerun skips these."""
        return set(self._ids)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[R]:
        return self.read()

    def read(self) -> Iterator[R]:
        """Yield the stored records in write order."""
        if self._fh is not None:
            self._fh.flush()
        for _, _, path in _list_shards(self.directory):
            with path.open("rb") as f:
                for lineno, raw in enumerate(f, 1):
                    yield _decode(_parse_line(raw), self.record_type, f"{path}:{lineno}")


class RejectsFile:
    """``rejects.jsonl`` of a stage folder: records a stage refused, one JSON line each.

    Entries are ``{"id", "source", "reason", "stage"}``; ``id`` is null when the line never
    became a record or repeated an earlier id. Re-adding an identical entry is a no-op, so a
    rerun that meets the same bad input line does not grow the file.
    """

    def __init__(self, directory: PathLike, stage: str | None = None) -> None:
        self.path, self.stage = Path(directory) / REJECTS_NAME, stage
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: list[Row] = []
        self._keys: set[tuple[Any, ...]] = set()
        self._fh: IO[bytes] | None = None
        if self.path.exists():
            cut = _scan_jsonl(self.path, lambda row, _label: self._remember(row), allow_torn_tail=True)
            if cut is not None:
                _cut_tail(self.path, cut)

    def _remember(self, entry: Row) -> bool:
        key = (entry.get("id"), entry.get("source"), entry.get("reason"), entry.get("stage"))
        if key in self._keys:
            return False
        self._keys.add(key)
        self._entries.append(entry)
        return True

    def add(self, record_id: str | None, source: str, reason: str, stage: str | None = None) -> bool:
        """Append (and fsync) one entry; returns False if the identical entry was already there."""
        entry = {"id": record_id, "source": source, "reason": reason, "stage": stage or self.stage}
        if not self._remember(entry):
            return False
        if self._fh is None:
            self._fh = self.path.open("ab")
        self._fh.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return True

    def rejected_ids(self) -> set[str]:
        """Ids of rejected records: count them as done on resume so they are not retried forever."""
        return {e["id"] for e in self._entries if e.get("id") is not None}

    def entries(self) -> list[Row]:
        """All entries, in file order."""
        return list(self._entries)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def handle_bad(record_label: str, reason: str, on_error: OnError, rejects: RejectsFile | None,
               record_id: str | None = None, stage: str | None = None) -> None:
    """Apply the error policy to one bad record: raise RecordError, or log it in ``rejects``."""
    if on_error == "raise":
        raise RecordError(f"{record_label}: {reason}")
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if rejects is None:
        log.warning("skipping %s: %s (no rejects file to record it in)", record_label, reason)
    else:
        rejects.add(record_id, record_label, reason, stage)


def _jsonl_rows(path: Path, on_error: OnError, rejects: RejectsFile | None) -> Iterator[tuple[str, Row]]:
    """(file:line, row) for each non-blank line; a malformed line goes through ``handle_bad``.

    In a ``.partial`` shard a last line without newline is a write cut short: warn and stop.
    """
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            label = f"{path}:{lineno}"
            if not raw.strip():
                continue
            if path.name.endswith(".partial") and not raw.endswith(b"\n"):
                log.warning("%s: ignoring a torn last line (its writer was interrupted)", label)
                return
            try:
                row = _parse_line(raw if raw.endswith(b"\n") else raw + b"\n")
            except ValueError as e:
                handle_bad(label, str(e), on_error, rejects)
                continue
            yield label, row


def _parquet_rows(path: Path, record_type: type[Record], question: str | None = None,
                  id_prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(file:row, row) for each parquet row; nulls of defaulted fields fall back to the default.
    Prompts: columns matched by name (``inputs.prompt_table_rows``: ``datasets`` files, ``question``
    the default question when there is no question column)."""
    import pyarrow.parquet as pq

    if record_type is Prompt:
        from .inputs import prompt_table_rows

        pf = pq.ParquetFile(path)
        yield from prompt_table_rows(pf.schema_arrow.names, (b.to_pylist() for b in pf.iter_batches(batch_size=256)),
                                     str(path), question, id_prefix, path.parent)
        return
    defaulted = {f.name for f in dataclasses.fields(record_type)
                 if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    rowno = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            rowno += 1
            yield f"{path}:{rowno}", {k: v for k, v in row.items() if v is not None or k not in defaulted}


#: Files only a stage folder holds (``write_manifest``, ``runner.run_stage``, a ``RecordStore``'s lock).
STAGE_MARKERS = (MANIFEST_NAME, "progress.jsonl", LOCK_NAME)


def is_stage_folder(path: Path) -> bool:
    """A folder a stage or RecordStore wrote (manifest, progress or lock file): its records are its shards only."""
    return any((path / name).exists() for name in STAGE_MARKERS)


def _input_files(path: Path) -> list[Path]:
    """A file itself; for a folder its shards in write order, else its *.jsonl and *.parquet.

    A stage folder without shards holds 0 records: its ``rejects.jsonl`` / ``progress.jsonl``
    are bookkeeping, never records of the stage's type.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist")
    shards = [p for _, _, p in _list_shards(path)]
    if shards and shards[-1].name.endswith(".partial"):
        log.warning("%s has an unfinished shard: the stage that wrote it may not have completed", path)
    if not shards and is_stage_folder(path):  # a stage that wrote nothing: its rejects/progress are not records
        log.warning("%s is a stage folder with no output shards: reading it as 0 records", path)
        return []
    files = shards or sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
    if not files:
        raise FileNotFoundError(f"input folder {path} holds no shard-*.jsonl, *.jsonl or *.parquet files")
    return files


def _record_rows(path: Path, record_type: type[Record], on_error: OnError, rejects: RejectsFile | None,
                 question: str | None) -> Iterator[tuple[str, Any]]:
    """(label, row or row builder) of every input file; prompts also from ``datasets`` folders and
    image folders (``inputs.py``)."""
    if record_type is Prompt:
        from .inputs import prompt_source_rows

        source = prompt_source_rows(path, question)
        if source is not None:
            yield from source
            return
    files = _input_files(path)
    for file in files:
        prefix = f"{file.stem}/" if len(files) > 1 else ""  # row-N ids of several id-less parquet files stay distinct
        yield from (_parquet_rows(file, record_type, question, prefix) if file.suffix == ".parquet"
                    else _jsonl_rows(file, on_error, rejects))


def read_records(path: PathLike, record_type: type[R], on_error: OnError = "raise",
                 rejects: RejectsFile | None = None, question: str | None = None) -> Iterator[R]:
    """Yield typed records from a JSONL file, a folder of shards, or a parquet file.

    Malformed lines, invalid records and repeated ids raise RecordError naming file:line, or
    with ``on_error="skip"`` go to ``rejects`` (the first occurrence of an id wins).
    """
    seen: dict[str, str] = {}
    for label, row in _record_rows(Path(path), record_type, on_error, rejects, question):
        try:
            rec = _decode(row() if callable(row) else row, record_type)
        except RecordError as e:
            handle_bad(label, str(e), on_error, rejects)
            continue
        if rec.id in seen:
            handle_bad(label, f"duplicate id {rec.id!r} (first at {seen[rec.id]})", on_error, rejects)
            continue
        seen[rec.id] = label
        yield rec


def read_inputs(path: PathLike, record_type: type[R], on_error: OnError = "raise", rejects_dir: PathLike | None = None,
                stage: str | None = None, what: str | None = None, question: str | None = None) -> list[R]:
    """Every record of a stage's input file, read before the stage's first record.

    ``raise``: the first malformed line stops with a RecordError naming file:line. ``skip``: each
    malformed line (bad JSON, not an object, invalid or duplicate record) goes to
    ``rejects_dir/rejects.jsonl`` with file:line and reason (a warning when there is no
    ``rejects_dir``, e.g. on a non-zero rank), and the good records are returned.
    ``what`` (e.g. "prompts"): no records at all is an error "no prompts in FILE", not an empty run.
    ``question``: prompts' default question where the source has no question column (``inputs.py``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    logged = on_error == "skip" and rejects_dir is not None
    if logged:
        with RejectsFile(rejects_dir, stage) as rejects:  # type: ignore[arg-type]
            records = list(read_records(path, record_type, "skip", rejects, question))
    else:
        records = list(read_records(path, record_type, on_error, question=question))
    if what and not records:
        why = f" (bad lines, if any, are in {Path(rejects_dir) / REJECTS_NAME})" if logged else ""  # type: ignore[arg-type]
        raise RecordError(f"no {what} in {path}{why}")
    return records


def rejects_count(directory: PathLike) -> int:
    """How many entries a stage folder's ``rejects.jsonl`` holds (0 without one)."""
    path = Path(directory) / REJECTS_NAME
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def package_versions() -> dict[str, str | None]:
    """Python and key package versions (None when a package is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(path: PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's sorted relative file names and their bytes."""
    path, h = Path(path), hashlib.sha256()
    if not path.exists():
        raise StoreError(f"input {path} does not exist, cannot fingerprint it")
    files = [p for p in path.rglob("*") if p.is_file() and p.name != LOCK_NAME] if path.is_dir() else [path]
    for p in sorted(files):
        if path.is_dir():  # name and size delimit each file, so moving bytes between files shows
            h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


#: config keys added after runs already existed, with the value that reproduces the old behaviour:
#: absent from an old manifest and at this value in the new one counts as the same setting, so
#: run folders made before the key existed still resume (any nesting level)
ADDED_LATER: dict[str, Any] = {
    "prefix_mode": "packed", "pack_tokens": 2048,  # conquer / best-of-N: packed == batched within 1e-4
    "mixed_precision": "no", "gradient_checkpointing": False, "max_steps": 0, "save_total_limit": None,
    "report_to": "none", "logging_dir": "",  # train
}


def _fill_added(old: Any, new: Any) -> Any:
    """``old`` with every ``ADDED_LATER`` key it lacks but ``new`` has at its old-behaviour value."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old
    out = {k: _fill_added(v, new.get(k)) for k, v in old.items()}
    for k, v in new.items():
        if k not in old and k in ADDED_LATER and v == ADDED_LATER[k]:
            out[k] = v
    return out


def _check_same_run(directory: Path, old: Row, new: Row, check_inputs: bool = False) -> None:
    """StoreError if resuming ``directory`` would mix outputs of different stages/configs/seeds.

    Path values are compared by what they name (``manifest_paths.same_path``: spelling, working
    directory and a moved run folder do not count); with ``check_inputs`` the inputs' content
    fingerprints must match too.
    """
    diffs = []
    for section in ("stage", "config", "seeds"):
        a, b = _fill_added(old.get(section), new[section]), new[section]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k) and not same_path(a.get(k), b.get(k), old, new)]
        elif a != b:
            diffs.append(f"{section}: {a!r} -> {b!r}")
    if check_inputs:
        diffs += changed_inputs(old, new)
    if diffs:
        raise StoreError(f"{directory} holds output of a different run ({'; '.join(diffs)}). "
                         f"Use a new output folder, or delete {directory} to start over.")


def write_manifest(directory: PathLike, stage: str, config: Row, seeds: Row, inputs: Iterable[PathLike],
                   check_inputs: bool = False) -> Row:
    """Write (or on resume, check and update) ``manifest.json``; returns the manifest.

    Raises StoreError if the folder already holds a manifest of another stage, config or seeds
    (or, with ``check_inputs``, of inputs whose content changed). ``cwd`` and ``location`` are
    stored so that later runs compare paths by what they name, not by their spelling.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # JSON round-trip: compare configs the way they are stored (tuples -> lists, Paths -> str)
    normalized = json.loads(json.dumps({"config": config, "seeds": seeds}, sort_keys=True, default=str))
    manifest = {"stage": stage, **normalized, "versions": package_versions(), "created": now, "updated": now,
                "hostname": socket.gethostname(), "cwd": os.getcwd(), "location": str(directory.resolve()),
                "inputs": [{"path": str(Path(p).resolve()), "sha256": fingerprint(p)} for p in inputs]}
    old = read_manifest(directory)
    if old is not None:
        _check_same_run(directory, old, manifest, check_inputs)
        manifest["created"] = old.get("created", now)
    tmp = directory / (MANIFEST_NAME + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_NAME)
    _fsync_dir(directory)
    return manifest


def read_manifest(directory: PathLike) -> Row | None:
    """The folder's manifest, or None if it has none."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is not valid JSON ({e})") from e


def shard_of(key: str, world_size: int) -> int:
    """Stable rank for a key (sha256, not Python's per-process salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % world_size


def sharded(items: Iterable[R], rank: int, world_size: int, key: Callable[[R], str] | None = None) -> Iterator[R]:
    """The items this rank owns: each item goes to exactly one of ``world_size`` ranks, by id."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    get = key or (lambda r: r.id)
    return (it for it in items if shard_of(get(it), world_size) == rank)


def merge_stores(dirs: Iterable[PathLike], out: PathLike, record_type: type[R], order: Iterable[str] | None = None,
                 key: Callable[[R], str] | None = None, shard_size: int = 1000) -> int:
    """Merge rank output folders (and their rejects) into the empty store ``out``.

    Records are sorted by the position of ``key(record)`` (default: its id) in ``order``, e.g.
    the prompt ids in input order with ``key=lambda c: c.prompt_id``; ties keep each rank's
    write order. Without ``order`` they are sorted by id. Rejects whose id is in ``order`` (a
    rejected input's key) follow it too, the others come after. Returns the number of records.
    """
    get = key or (lambda r: r.id)
    records: list[R] = []
    rejects: list[Row] = []
    for d in dirs:
        with RecordStore(d, record_type) as rank_store:
            records.extend(rank_store)
        if (Path(d) / REJECTS_NAME).exists():
            rejects.extend(RejectsFile(d).entries())
    position = {k: i for i, k in enumerate(order)} if order is not None else None
    if position is None:
        records.sort(key=lambda r: r.id)
    else:
        lost = next((r for r in records if get(r) not in position), None)
        if lost is not None:
            raise StoreError(f"cannot order merged output: key {get(lost)!r} of {lost.id!r} is not in `order`")
        records.sort(key=lambda r: position[get(r)])
        rejects.sort(key=lambda e: position.get(e.get("id"), len(position)))  # type: ignore[arg-type]
    with RecordStore(out, record_type, shard_size) as merged:
        if len(merged):
            raise StoreError(f"merge target {out} is not empty; delete it or use a new folder")
        merged.write(records)
    with RejectsFile(out) as rej:
        for e in rejects:
            rej.add(e.get("id"), e.get("source", ""), e.get("reason", ""), e.get("stage"))
    return len(records)
