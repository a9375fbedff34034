"""Run a stage function over input items with resume, batching, progress and rejects.

A stage is ``process(batch_of_inputs) -> output records``. The runner:

* skips inputs already finished (their keys are in ``progress.jsonl``, appended and fsync'd
  only after the batch's outputs are durably written), so a killed run resumes where it
  stopped; outputs of a batch cut short by a kill are not written twice (same id = same
  record, since every stage is deterministic given its seeds);
* writes a manifest (config, seeds, versions, input fingerprints) and refuses to resume a
  folder made with another config;
* with ``on_error='skip'``, sets a failing input aside in ``rejects.jsonl`` with its reason
  (the batch is retried one input at a time to find it) instead of stopping; until some input
  of the stage has succeeded, failures are held back: when the first inputs all fail (a setting
  or the model is at fault, not the inputs) the run stops with one error and rejects nothing;
* builds the stage's ``process`` (loads its models) only when there is work: a finished stage
  says "nothing to do: N of N done", a resumed one "resuming: N of M done";
* splits inputs across processes (``rank``/``world_size``) by a stable hash of their key:
  each process writes its share into ``out_dir/rank-{r}/``; ``stages/feedback.py`` waits for
  every process (``barrier``) and merges the rank folders back into input order.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

from .config import ConfigError
from .progress import progress_bar, say
from .records import Record, RecordError
from .resume import FingerprintLog, carried_rejects, check_resume, record_fingerprint, recover_redo, set_rejects_aside
from .store import MANIFEST_NAME, OnError, RecordStore, RejectsFile, handle_bad, shard_of, write_manifest

I = TypeVar("I")
PROGRESS_NAME = "progress.jsonl"
#: Under ``on_error='skip'``, a stage with 2+ inputs to do, none of which has succeeded yet, stops (rejecting
#: nothing) once this many inputs in a row have failed, or all of them if there are fewer. (One
#: input that fails is rejected: alone, a bad input and a bad setting cannot be told apart.)
FAIL_FAST_AFTER = 32


@dataclass
class StageResult(Generic[I]):
    """What a run did: counts, and the folder holding the records."""

    out_dir: Path
    n_inputs: int = 0
    n_skipped_done: int = 0
    n_processed: int = 0
    n_rejected: int = 0
    n_written: int = 0
    rejected: list[str] = field(default_factory=list)
    n_rejects_carried: int = 0  # inputs an earlier run rejected, still set aside (not retried)
    redone: list[str] = field(default_factory=list)  # done inputs that changed and were redone (--redo-changed)


class StageInputError(ValueError):
    """A bad input stopped a stage (``on_error='raise'``); the message names the input."""


class StageSetupError(StageInputError):
    """Every input of a stage failed before any succeeded: a setting or the model is at fault,
    so nothing was rejected (``on_error='skip'`` would otherwise set every input aside)."""


def read_progress(path: Path) -> list[str]:
    """Finished input keys listed in a ``progress.jsonl`` (empty if there is none)."""
    done: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    done.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a kill: that batch is simply redone
    return done


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line cut short by a kill, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logging.getLogger(__name__).warning("%s: dropping a torn last line left by a kill", path)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


class _Progress:
    """Append-only, fsync'd list of finished input keys."""

    def __init__(self, path: Path, before_mark: Callable[[Sequence[str]], None] | None = None) -> None:
        self.path, self.before_mark = path, before_mark  # before_mark: e.g. store the inputs' fingerprints
        _cut_torn_tail(path)
        self.done: set[str] = set(read_progress(path))
        self._f = open(path, "a")

    def mark(self, keys: Sequence[str]) -> None:
        if self.before_mark is not None:
            self.before_mark(keys)
        self._f.write("".join(json.dumps(k) + "\n" for k in keys))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.update(keys)

    def close(self) -> None:
        self._f.close()


def rank_and_world() -> tuple[int, int]:
    """This process's share of the work under ``accelerate launch`` / torchrun (default 0 of 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:{LOCAL_RANK}`` when several processes run (one GPU each); else as given."""
    if device == "cuda" and rank_and_world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


#: How long a process waits at a barrier for the others (their shares may be uneven; the
#: torch default of 30 min is too short for hours-long stages). Override: RLAIFV_BARRIER_TIMEOUT_S.
BARRIER_TIMEOUT_S = 48 * 3600


def barrier() -> None:
    """Wait until every process of the launch gets here (no-op with one process).

    Uses accelerate's state when the program initialised it, else a torch.distributed gloo
    group (CPU-only; a barrier moves no data) set up from the launcher's RANK/WORLD_SIZE/
    MASTER_ADDR/MASTER_PORT. A process that fails makes the launcher stop the others.
    """
    if rank_and_world()[1] <= 1:
        return
    try:
        from accelerate.state import PartialState
    except ImportError:  # accelerate is optional: torch.distributed is enough
        PartialState = None
    if PartialState is not None and PartialState._shared_state:  # initialised by the program
        PartialState().wait_for_everyone()
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = float(os.environ.get("RLAIFV_BARRIER_TIMEOUT_S", BARRIER_TIMEOUT_S))
        dist.init_process_group("gloo", timeout=_dt.timedelta(seconds=timeout))
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    dist.barrier()


def run_stage(
    stage: str,
    out_dir: str | Path,
    record_type: type[Record],
    inputs: Sequence[I],
    key: Callable[[I], str],
    process: Callable[[list[I]], list[Record]] | None,
    *,
    make_process: Callable[[], Callable[[list[I]], list[Record]]] | None = None,
    config: dict,
    seeds: dict | None = None,
    input_paths: Sequence[str | Path] = (),
    batch_size: int = 8,
    on_error: OnError = "raise",
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
    fingerprint: Callable[[I], str | None] | None = None,
    record_key: Callable[[Record], str] | None = None,
    retry_rejects: bool = False,
    redo_changed: bool = False,
) -> StageResult[I]:
    """Process every input not yet done, ``batch_size`` at a time, into ``out_dir``.

    Resume integrity (``resume.py``): ``fingerprint(input)`` (default: the record's content) is
    stored when an input is done; a done input that changed since is refused, or with
    ``redo_changed`` its outputs (found by ``record_key(output) == key(input)``) are dropped and
    it is redone. ``retry_rejects`` retries inputs an earlier run rejected (old entries kept aside).

    ``make_process`` (instead of ``process``) builds the stage function, e.g. loads its models,
    only when some input is left to do: rerunning a finished stage loads nothing.
    """
    if (process is None) == (make_process is None):
        raise TypeError("run_stage: give exactly one of process and make_process")
    out = Path(out_dir) / f"rank-{rank}" if world_size > 1 else Path(out_dir)
    recover_redo(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, stage, config, seeds or {}, list(input_paths))
    mine = [x for x in inputs if world_size == 1 or shard_of(key(x), world_size) == rank]
    res: StageResult[I] = StageResult(out, n_inputs=len(mine))
    fplog = _resume_checks(stage, out, record_type, mine, key, fingerprint or record_fingerprint, record_key,
                           retry_rejects, redo_changed, res)
    with RecordStore(out, record_type) as store, RejectsFile(out, stage) as rejects:
        res.n_rejects_carried = carried_rejects(rejects, (key(x) for x in mine))
        prog = _Progress(out / PROGRESS_NAME, before_mark=fplog.mark)
        try:
            batches = todo_batches(mine, key, prog.done, set(rejects.rejected_ids()), batch_size)
            n_todo = sum(len(b) for b, _ in batches)
            res.n_skipped_done = len(mine) - n_todo
            label = f"{stage} (rank {rank}/{world_size})" if world_size > 1 else stage
            say(resume_note(label, len(mine), sum(key(x) in prog.done for x in mine), n_todo), show_progress and bool(mine))
            if not batches:
                return res
            process = process or make_process()  # type: ignore[misc]  # models load only when there is work
            written = store.done_ids()
            n_seen = 0
            fail = _Failures(stage, key, on_error, rejects, res, hold=on_error == "skip" and not prog.done and n_todo > 1, n_todo=n_todo)
            with progress_bar(label, show_progress) as bar:
                for batch, alone in batches:
                    run = _one_by_one if alone else _process_batch
                    records, ok = run(batch, process, fail)
                    fresh = [r for r in records if r.id not in written]
                    store.write(fresh)
                    written.update(r.id for r in fresh)
                    prog.mark([key(x) for x in ok])
                    res.n_processed += len(ok)
                    res.n_written += len(fresh)
                    n_seen += len(batch)
                    bar(n_seen, n_todo, f"{res.n_written} records")
        except StageSetupError:
            if not len(store) and not rejects.rejected_ids():  # nothing done: the fixed setting may start afresh here
                (out / MANIFEST_NAME).unlink(missing_ok=True)
            raise
        finally:
            prog.close()
    return res


def todo_batches(mine: Sequence[I], key: Callable[[I], str], done: set[str], rejected: set[str],
                 batch_size: int) -> list[tuple[list[I], bool]]:
    """The batches left to run, as ``(inputs, one_by_one)``, cut from the FULL input list.

    Cutting from what is left would group inputs differently after a kill or a reject than an
    uninterrupted run did; here done and rejected inputs are dropped inside their original
    batch, so every input meets the same companions. A batch holding an input an earlier run
    rejected runs one input at a time, as that run did once the bad input failed the batch.
    Stages are also batch-independent by construction (``stages/sample.py``); this keeps
    reruns byte-identical for any stage whose output might depend on its batch.
    """
    out: list[tuple[list[I], bool]] = []
    for start in range(0, len(mine), batch_size):
        full = list(mine[start : start + batch_size])
        left = [x for x in full if key(x) not in done and key(x) not in rejected]
        if left:
            out.append((left, len(left) > 1 and any(key(x) in rejected for x in full)))
    return out


def _resume_checks(stage: str, out: Path, record_type: type[Record], mine: Sequence[I], key: Callable[[I], str],
                   fingerprint: Callable[[I], str | None], record_key: Callable[[Record], str] | None,
                   retry_rejects: bool, redo_changed: bool,
                   res: StageResult) -> FingerprintLog:
    """Before a (re)run: refuse or redo changed done inputs, set old rejects aside if asked;
    returns the log that stores each input's fingerprint when it is marked done."""
    res.redone = check_resume(stage, out, mine, key, fingerprint, read_progress(out / PROGRESS_NAME),
                              redo_changed, record_type, record_key)
    if retry_rejects:
        set_rejects_aside(out, (key(x) for x in mine))
    by_key = {key(x): x for x in mine}
    return FingerprintLog(out, lambda k: fingerprint(by_key[k]) if k in by_key else None)


def resume_note(label: str, n_inputs: int, n_done: int, n_todo: int) -> str:
    """ "nothing to do: N of N done" / "resuming: N of M done" / "" (a fresh run), with earlier rejects."""
    n_rejected = n_inputs - n_done - n_todo
    rejected = f" ({n_rejected} rejected earlier)" if n_rejected else ""
    if n_todo == 0:
        return f"{label}: nothing to do: {n_done} of {n_inputs} done{rejected}"
    if n_done or n_rejected:
        return f"{label}: resuming: {n_done} of {n_inputs} done{rejected}"
    return ""


class _Failures:
    """Where a failing input goes: an error (``raise``), or ``rejects.jsonl`` (``skip``).

    With ``hold`` (skip, 2+ inputs to do, none done yet) rejects are kept back until
    an input succeeds: when the first ``min(FAIL_FAST_AFTER, n_todo)`` inputs all fail, the cause
    is a setting or the model (a limit no input meets, a labeler that cannot answer), so the run
    stops with one StageSetupError instead of rejecting every input and ending "successfully".
    """

    def __init__(self, stage: str, key: Callable, on_error: OnError, rejects: RejectsFile, res: StageResult,
                 hold: bool, n_todo: int) -> None:
        self.stage, self.key, self.on_error, self.rejects, self.res = stage, key, on_error, rejects, res
        self.hold, self.limit = hold, max(1, min(FAIL_FAST_AFTER, n_todo))
        self.held: list[tuple[str, str]] = []

    def reject(self, key: str, reason: str) -> None:
        if not self.hold:
            self._write(key, reason)
            return
        self.held.append((key, reason))
        if len(self.held) >= self.limit:
            first_key, first_reason = self.held[0]
            which = f"all {self.limit} inputs" if self.limit == self.res.n_inputs else f"the first {self.limit} inputs"
            raise StageSetupError(f"{self.stage}: {which} failed and none succeeded: a setting or the model, not the inputs, "
                                  f"is the likely cause, so nothing was rejected; first failure, input {first_key!r}: {first_reason}")

    def succeeded(self) -> None:
        """An input went through: the held failures were the inputs' own, write them."""
        self.hold = False
        for key, reason in self.held:
            self._write(key, reason)
        self.held.clear()

    def _write(self, key: str, reason: str) -> None:
        handle_bad(f"{self.stage} input {key!r}", reason, self.on_error, self.rejects, record_id=key, stage=self.stage)
        self.res.n_rejected += 1
        self.res.rejected.append(key)


def _process_batch(batch, process, fail: _Failures):
    """Run a batch; on error with 'skip', retry one by one and reject the failing inputs.

    Only errors about an input are its fault: a ConfigError (a setting no input can satisfy) and
    a bare OSError (disk full, a network hiccup; unreadable images arrive as ImageError) stop the
    run, so a transient failure never rejects records for good.
    """
    try:
        records = process(batch)
    except ConfigError:
        raise
    except (RecordError, ValueError, FloatingPointError) as e:
        if len(batch) > 1:
            return _one_by_one(batch, process, fail)
        if fail.on_error == "raise":
            raise StageInputError(f"{fail.stage}: input {fail.key(batch[0])!r}: {e} (use --on-error skip to set such inputs aside)") from e
        fail.reject(fail.key(batch[0]), str(e))
        return [], []
    fail.succeeded()
    return records, batch


def _one_by_one(batch, process, fail: _Failures):
    records: list[Record] = []
    ok = []
    for x in batch:
        r, good = _process_batch([x], process, fail)
        records += r
        ok += good
    return records, ok
