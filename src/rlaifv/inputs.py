"""Prompts from what the ecosystem produces, and a run folder's own copy of its prompts.

Sources ``read_records(path, Prompt)`` accepts besides rlaifv's JSONL (``store.py`` calls
:func:`prompt_source_rows` and :func:`prompt_table_rows`):

* **parquet** (e.g. written by Hugging Face ``datasets``' ``to_parquet``) and a
  **``save_to_disk`` folder** (a ``Dataset``, or a ``DatasetDict`` with one split; for several
  splits give ``FOLDER/<split>``). Columns are matched by name: the id is the first of
  ``prompt_id, id, question_id, idx, image_id`` (none: ``row-N``, N counted from 0 in the file),
  the question the first of ``question, prompt, query, instruction`` (a TRL conversational
  ``prompt``: the user message's text parts), the image the first of ``image`` (an ``Image()``
  column: ``{bytes, path}``, bytes win), ``images`` (a list holding exactly one image, as TRL
  data), ``image_path``, ``file_name``. Other scalar columns go to ``metadata``.
* **an ``imagefolder``-style folder** (the ``datasets`` ImageFolder convention): image files,
  in subfolders too, and optional ``metadata.jsonl`` / ``metadata.csv`` files whose
  ``file_name`` names an image relative to the metadata file; the question comes from a
  question column, else from the default question (``feedback --question``). The prompt id is
  the metadata id column, else the image's path inside the folder (which is also its image
  reference, relative to the folder).
* The RLAIF-V-Dataset schema is imported by ``rlaifv import-rlaifv`` into a folder whose
  ``prompts.jsonl`` is an ordinary prompts file.

Run folders that travel (:func:`copy_into_run`): ``feedback`` writes the prompts it read to
``RUN/prompts/prompts.jsonl`` and each image, byte for byte, to ``RUN/prompts/images/`` (named
``<sha256[:16]>-<original name>``, so equal files are stored once and two ``1.jpg`` of
different folders do not collide); image references in the copy are relative to it, so the run
folder can move to another directory or machine and ``export --run``, ``train`` and
``best-of-n`` still find every image. ``copy_images: false`` keeps the original files where
they are (the copy then names them by absolute path). The copy is rewritten identically by a
rerun, and resume fingerprints cover a prompt's question and image bytes, never the path, so
the same command still resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .images import ImageError, image_bytes_of, image_path
from .records import Prompt, RecordError

Row = dict[str, Any]
#: (label, row) where row may be a zero-argument function building the row (its RecordError is the row's error)
LabeledRow = tuple[str, "Row | Callable[[], Row]"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
ID_COLUMNS = ("prompt_id", "id", "question_id", "idx", "image_id")
QUESTION_COLUMNS = ("question", "prompt", "query", "instruction")
IMAGE_COLUMNS = ("image", "images", "image_path", "file_name")


# ----------------------------------------------------------------------------- tables (parquet, datasets)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Which column of a table gives which Prompt field."""

    id: str | None
    question: str | None
    image: str | None
    extra: tuple[str, ...]


def _plan(columns: Iterable[str], question: str | None, where: str) -> _Plan:
    cols = list(columns)
    pick = lambda names: next((c for c in names if c in cols), None)  # noqa: E731
    q = pick(QUESTION_COLUMNS)
    if q is None and not question:
        raise RecordError(f"{where}: no question column (one of {', '.join(QUESTION_COLUMNS)}) and no default question "
                          "(rlaifv feedback --question 'Describe the image in detail.')")
    used = {pick(ID_COLUMNS), q, pick(IMAGE_COLUMNS), "image_bytes", "metadata"}
    return _Plan(pick(ID_COLUMNS), q, pick(IMAGE_COLUMNS), tuple(c for c in cols if c not in used))


def _question_text(value: Any) -> Any:
    """A question string; a TRL conversational prompt gives the text parts of its user message."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        user = next((m for m in value if m.get("role") == "user"), value[0])
        content = user.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text").strip()
    return value


def _image_fields(value: Any, column: str | None, label: str) -> Row:
    """``image`` / ``image_bytes`` of a row from its image cell."""
    if column == "images":
        if not isinstance(value, list) or len(value) != 1:
            n = len(value) if isinstance(value, list) else type(value).__name__
            raise RecordError(f"{label}: column 'images' holds {n} images; a prompt takes exactly one image")
        value = value[0]
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:  # an Image() cell: the bytes win
        return {"image_bytes": value.get("bytes")} if value.get("bytes") else {"image": value.get("path")}
    if isinstance(value, (bytes, bytearray)):
        return {"image_bytes": bytes(value)}
    return {"image": value}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _table_row(raw: Row, plan: _Plan, n: int, id_prefix: str, question: str | None, label: str,
               base: Path | None) -> Row:
    """One table row as a Prompt dict (called lazily: a RecordError here rejects this row only)."""
    pid = raw.get(plan.id) if plan.id else f"{id_prefix}row-{n}"
    row: Row = {"prompt_id": str(pid) if isinstance(pid, (int, str)) and not isinstance(pid, bool) else pid,
                "question": _question_text(raw.get(plan.question)) if plan.question else question}
    if plan.image is not None:
        row.update(_image_fields(raw.get(plan.image), plan.image, label))
    if raw.get("image_bytes") is not None:
        row["image_bytes"] = raw["image_bytes"]
    image = row.get("image")
    if isinstance(image, str) and base is not None and not Path(image).is_absolute() and (base / image).exists():
        row["image"] = str((base / image).resolve())  # relative to the dataset folder: made absolute
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    row["metadata"] = {**{c: raw[c] for c in plan.extra if _scalar(raw.get(c))}, **meta}
    return {k: v for k, v in row.items() if v is not None or k in ("prompt_id", "question")}


def prompt_table_rows(columns: Iterable[str], batches: Iterable[list[Row]], where: str, question: str | None = None,
                      id_prefix: str = "", base: Path | None = None) -> Iterator[LabeledRow]:
    """(``where:N``, row builder) for each row of a table of prompts (columns matched by name, module doc)."""
    plan = _plan(columns, question, where)
    n = 0
    for batch in batches:
        for raw in batch:
            label = f"{where}:{n + 1}"
            yield label, functools.partial(_table_row, raw, plan, n, id_prefix, question, label, base)
            n += 1


def _hf_disk_rows(path: Path, question: str | None) -> Iterator[LabeledRow]:
    """Rows of a ``datasets`` ``save_to_disk`` folder, read as stored (images are not decoded)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise RecordError(f"{path}: not a readable datasets save_to_disk folder ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise RecordError(f"{path}: a DatasetDict with splits {sorted(ds)}; give one split's folder, e.g. {path / sorted(ds)[0]}")
        ds = next(iter(ds.values()))
    batches = (t.to_pylist() for t in ds.with_format("arrow").iter(batch_size=256))
    yield from prompt_table_rows(ds.column_names, batches, str(path), question, base=path)


# ----------------------------------------------------------------------------- image folders


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _metadata_rows(meta: Path) -> Iterator[tuple[str, Row]]:
    """(``file:line``, row) of a metadata.jsonl / metadata.csv file."""
    if meta.suffix == ".csv":
        with meta.open(newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                yield f"{meta}:{n}", dict(row)
        return
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{meta}:{n}: not a JSON object ({e})") from e
            if not isinstance(row, dict):
                raise RecordError(f"{meta}:{n}: expected a JSON object, got {type(row).__name__}")
            yield f"{meta}:{n}", row


def _image_folder_rows(root: Path, question: str | None) -> Iterator[LabeledRow]:
    """One prompt per image of an imagefolder-style folder (module doc)."""
    images = sorted(p for p in root.rglob("*") if _is_image(p) and not any(s.startswith(".") for s in p.relative_to(root).parts))
    metas = sorted(p for name in METADATA_FILES for p in root.rglob(name))
    listed: dict[Path, tuple[str, Row]] = {}
    for meta in metas:
        for label, row in _metadata_rows(meta):
            if not isinstance(row.get("file_name"), str) or not row["file_name"]:
                raise RecordError(f"{label}: no file_name (the image this row describes, relative to {meta.parent})")
            listed[(meta.parent / row["file_name"]).resolve()] = (label, row)
    has_question = any(c in row for _, row in listed.values() for c in QUESTION_COLUMNS)
    if not has_question and not question:
        raise RecordError(f"{root}: an image folder without a question column in metadata.jsonl/csv "
                          f"(file_name and one of {', '.join(QUESTION_COLUMNS)}); add one, or give one question for every "
                          "image with rlaifv feedback --question 'Describe the image in detail.'")
    seen: set[Path] = set()
    for img in images:
        key = img.resolve()
        seen.add(key)
        label, meta_row = listed.get(key, (str(img), {}))
        yield label, functools.partial(_folder_row, root, img, meta_row, question)
    for key, (label, meta_row) in listed.items():  # listed in metadata but not found: the stage names it
        if key not in seen:
            yield label, functools.partial(_folder_row, root, key, meta_row, question)


def _folder_row(root: Path, img: Path, meta: Row, question: str | None) -> Row:
    """One image's Prompt dict (called lazily: a RecordError here rejects this image only)."""
    q = next((meta[c] for c in QUESTION_COLUMNS if c in meta), None)
    if q is None and not question:
        raise RecordError(f"no question for {img.name}: no metadata row with a question column names it, and no default "
                          "question was given (rlaifv feedback --question)")
    pid = next((meta[c] for c in ID_COLUMNS if c in meta), None)
    inside = img.resolve().is_relative_to(root.resolve())  # then relative to the folder (its base), else absolute
    rel = img.resolve().relative_to(root.resolve()).as_posix() if inside else img.name
    extra = {k: v for k, v in meta.items() if k not in QUESTION_COLUMNS and k not in ID_COLUMNS and _scalar(v)}
    return {"prompt_id": str(pid) if pid is not None else rel, "question": _question_text(q) if q is not None else question,
            "image": rel if inside else str(img.resolve()), "metadata": {**extra, "file_name": rel}}


# ----------------------------------------------------------------------------- detection


def source_kind(path: Path) -> str | None:
    """``"hf_disk"`` (a ``save_to_disk`` folder), ``"image_folder"``, or None (rlaifv's own formats)."""
    from .store import is_stage_folder

    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()):
        return "hf_disk"
    if is_stage_folder(path):
        return None
    if any(p.is_file() and p.suffix in (".jsonl", ".parquet") and p.name not in METADATA_FILES for p in path.iterdir()):
        return None  # a folder of prompts files (e.g. an import-rlaifv folder): read as before
    return "image_folder" if any(_is_image(p) for p in path.rglob("*")) else None


def prompt_source_rows(path: Path, question: str | None = None) -> Iterator[LabeledRow] | None:
    """Rows of a ``save_to_disk`` folder or an image folder; None for any other path."""
    kind = source_kind(Path(path))
    if kind == "hf_disk":
        return _hf_disk_rows(Path(path), question)
    if kind == "image_folder":
        return _image_folder_rows(Path(path), question)
    return None


# ----------------------------------------------------------------------------- the run's own copy

PROMPTS_DIR, PROMPTS_FILE, IMAGES_DIR = "prompts", "prompts.jsonl", "images"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_prompts_file(out: str | os.PathLike) -> Path:
    """``out/prompts/prompts.jsonl``: where a run keeps the prompts it was made from."""
    return Path(out) / PROMPTS_DIR / PROMPTS_FILE


def _image_name(data: bytes, original: str | None) -> str:
    """``<sha256[:16]>-<original file name>`` (or ``<sha256[:16]>.<format>`` for inline bytes)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    if original:
        return f"{digest}-{_UNSAFE.sub('_', Path(original).name)[-80:]}"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only: nothing is decoded
            fmt = (img.format or "img").lower()
    except (UnidentifiedImageError, OSError):  # not an image: the stage that decodes it rejects it, naming the prompt
        fmt = "img"
    return f"{digest}.{'jpg' if fmt == 'jpeg' else fmt}"


def _write_atomic(path: Path, data: bytes, sync: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _materialized(p: Prompt, base: Path | None, images: Path, copy_images: bool) -> Prompt:
    """The prompt with its image as a file of the run (or, not copied, by absolute path)."""
    original = image_path(p, base)
    source = str(original.resolve()) if original is not None else None
    if p.image_bytes is None and not copy_images:
        return dataclasses.replace(p, image=source)
    try:
        data = image_bytes_of(p, base)
    except ImageError:  # missing / unreadable: kept by absolute path, the stage that loads it reports it (or rejects it)
        return dataclasses.replace(p, image=source)
    name = _image_name(data, p.image if p.image_bytes is None else None)
    if not (images / name).exists():
        images.mkdir(parents=True, exist_ok=True)
        _write_atomic(images / name, data)
    # the reference as the source gave it (not resolved: a moved project rewrites an identical copy)
    meta = {**p.metadata, "source_image": p.image} if p.image and p.image_bytes is None else p.metadata
    return dataclasses.replace(p, image=f"{IMAGES_DIR}/{name}", image_bytes=None, metadata=meta)


def _is_run_copy(source: Path, dest: Path) -> bool:
    """The source already is the run's copy (sandbox prompts, or the copy given back as --prompts)."""
    src = source.resolve()
    return src == dest.resolve() or src == dest.parent.resolve()


def copy_into_run(prompts: list[Prompt], source: str | os.PathLike, out: str | os.PathLike,
                  copy_images: bool = True) -> tuple[list[Prompt], Path]:
    """Write ``prompts`` (read from ``source``) to ``out/prompts/`` (module doc); (the copy's prompts, its path).

    Several processes: rank 0 writes, the others wait and read the copy. Unchanged prompts
    leave the file untouched; images are content-named and written once.
    """
    from .runner import barrier, rank_and_world
    from .store import _fsync_dir, read_records

    source, dest = Path(source), run_prompts_file(out)
    if _is_run_copy(source, dest):
        return prompts, source
    if rank_and_world()[0] == 0:
        base = source.parent if source.is_file() else source
        rows = [_materialized(p, base, dest.parent / IMAGES_DIR, copy_images) for p in prompts]
        data = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        if not dest.exists() or dest.read_bytes() != data:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(dest, data, sync=True)
            _fsync_dir(dest.parent)
    barrier()
    return list(read_records(dest, Prompt)), dest
