"""Preference data in the formats other tools use (``rlaif-v-method.md`` §6).

* :func:`to_trl`: TRL's conversational vision preference format (as ``HuggingFaceH4/rlaif-v_formatted``):
  ``images`` (a list with one image), ``prompt`` (a user message: image part, then text part),
  ``chosen`` / ``rejected`` (an assistant message with one text part), plus ``pair_id``.
* :func:`to_rlaifv_dataset` / :func:`from_rlaifv_dataset`: the ``openbmb/RLAIF-V-Dataset``
  parquet schema (``ds_name``, ``image`` {bytes, path}, ``question``, ``chosen``, ``rejected``,
  ``origin_dataset``, ``origin_split`` (JSON string), ``idx`` (string), ``image_path``).

Images always travel as the original file bytes (:func:`rlaifv.images.image_bytes_of`), never
re-encoded, so pixels and hashes survive every round trip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import datasets
from PIL import Image, UnidentifiedImageError

from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, check_image_bytes, check_pixels, image_bytes_of, image_path
from .records import Prompt, PreferencePair, RecordError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
TRL_FILE = "train.parquet"
RLAIFV_FILE = "RLAIF-V-Dataset_000.parquet"
RLAIFV_COLUMNS = ("ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split",
                  "idx", "image_path")


def _list_of(feature: Any) -> Any:
    """A list feature: ``datasets.List`` (datasets >= 4) or the plain-list spelling of 3.x
    (``Sequence`` of a dict would turn it into a dict of lists)."""
    return datasets.List(feature) if hasattr(datasets, "List") else [feature]


def _message_feature() -> Any:
    """A list of chat messages: {role, content: [{type, text}]}."""
    text = datasets.Value("string")
    return _list_of({"role": text, "content": _list_of({"type": text, "text": text})})


def trl_features() -> datasets.Features:
    """Features of the TRL vision preference format (``text`` is null in the image part)."""
    msg = _message_feature()
    return datasets.Features({"images": _list_of(datasets.Image()), "prompt": msg, "chosen": msg,
                              "rejected": msg, "pair_id": datasets.Value("string")})


def rlaifv_features() -> datasets.Features:
    """Features of ``openbmb/RLAIF-V-Dataset`` (column order and types as its dataset card)."""
    text = datasets.Value("string")
    return datasets.Features({name: datasets.Image() if name == "image" else text for name in RLAIFV_COLUMNS})


def _image_cell(pair: PreferencePair, prompts: Mapping[str, Prompt], base_dir: Path | None,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, checked: dict[str, bytes] | None = None) -> dict[str, Any]:
    """{bytes, path} of a pair's image: the original file bytes, never re-encoded.

    The bytes are first decoded in full (and held to ``max_pixels``): a prompt's path may name
    any file (``../../etc/passwd``), which must not be shipped as image bytes. RecordError
    names the pair and its prompt. ``checked`` remembers prompts already verified (one decode
    per prompt, not per pair).
    """
    prompt = prompts.get(pair.prompt_id)
    if prompt is None:
        raise RecordError(f"pair {pair.id!r}: prompt {pair.prompt_id!r} is not in prompts")
    checked = {} if checked is None else checked
    if pair.prompt_id not in checked:
        try:
            data = image_bytes_of(prompt, base_dir)
            where = "inline image_bytes" if prompt.image_bytes is not None else str(image_path(prompt, base_dir))
            check_image_bytes(data, f"prompt {pair.prompt_id!r}", where, max_pixels)
        except ImageError as e:
            raise RecordError(f"pair {pair.id!r}: {e}") from e
        checked[pair.prompt_id] = data
    data = checked[pair.prompt_id]
    name = Path(prompt.image).name if prompt.image else f"{_digest(data)}{_extension(data, pair.id)}"
    return {"bytes": data, "path": name}


def _write(rows: dict[str, list[Any]], features: datasets.Features, path: Path) -> datasets.Dataset:
    """Build the Dataset (image cells keep their bytes as given) and write it as parquet."""
    ds = datasets.Dataset.from_dict(rows, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return ds


def to_trl(pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt], base_dir: PathLike | None,
           out_dir: PathLike, filename: str = TRL_FILE, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> datasets.Dataset:
    """Write ``out_dir/filename`` in TRL's conversational vision preference format; return it.

    ``base_dir`` resolves relative image paths (the prompts file's folder). Load it back with
    ``datasets.load_dataset("parquet", data_files=...)``; images decode to PIL. A prompt whose
    file is not a decodable image within ``max_pixels`` is a RecordError naming the pair.
    """
    base = Path(base_dir) if base_dir is not None else None
    rows: dict[str, list[Any]] = {name: [] for name in trl_features()}
    checked: dict[str, bytes] = {}
    for pair in pairs:
        rows["images"].append([_image_cell(pair, prompts, base, max_pixels, checked)])
        rows["prompt"].append([{"role": "user", "content": [{"type": "image", "text": None},
                                                            {"type": "text", "text": pair.question}]}])
        rows["chosen"].append([{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}])
        rows["rejected"].append([{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}])
        rows["pair_id"].append(pair.id)
    return _write(rows, trl_features(), Path(out_dir) / filename)


def to_rlaifv_dataset(pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt], base_dir: PathLike | None,
                      out_dir: PathLike, ds_name: str = "rlaifv", generator_model: str = "",
                      labeler_model: str = "", filename: str = RLAIFV_FILE,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> datasets.Dataset:
    """Write ``out_dir/filename`` in the ``openbmb/RLAIF-V-Dataset`` schema; return it.

    ``idx`` is the row index (a string, as in the hub data). ``origin_split`` is a JSON string
    ``{"model", "feedback_model", "type"}``: generator and labeler model (arguments, else
    ``provenance["generator_model"|"labeler_model"]``) and the question type
    (``prompt.metadata["question_type"]``, e.g. "detailed description" / "question answering").
    ``origin_dataset`` is ``prompt.metadata["origin_dataset"]`` or ``ds_name``. A prompt whose
    file is not a decodable image within ``max_pixels`` is a RecordError naming the pair.
    """
    base = Path(base_dir) if base_dir is not None else None
    rows: dict[str, list[Any]] = {name: [] for name in RLAIFV_COLUMNS}
    checked: dict[str, bytes] = {}
    for i, pair in enumerate(pairs):
        image = _image_cell(pair, prompts, base, max_pixels, checked)
        meta = prompts[pair.prompt_id].metadata
        split = {"model": generator_model or pair.provenance.get("generator_model", ""),
                 "feedback_model": labeler_model or pair.provenance.get("labeler_model", ""),
                 "type": meta.get("question_type", "")}
        values = {"ds_name": ds_name, "image": image, "question": pair.question, "chosen": pair.chosen,
                  "rejected": pair.rejected, "origin_dataset": str(meta.get("origin_dataset", ds_name)),
                  "origin_split": json.dumps(split, ensure_ascii=False), "idx": str(i),
                  "image_path": prompts[pair.prompt_id].image or image["path"]}
        for name in RLAIFV_COLUMNS:
            rows[name].append(values[name])
    return _write(rows, rlaifv_features(), Path(out_dir) / filename)


# ----------------------------------------------------------------------------- import


def _digest(data: bytes) -> str:
    """Content name of an image file: the first 32 hex digits of its sha256."""
    return hashlib.sha256(data).hexdigest()[:32]


def _extension(data: bytes, label: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """File extension from the image header (PIL reads the header only: nothing is decoded);
    RecordError naming the row when it is no image or larger than ``max_pixels`` (0: no limit)."""
    try:
        with warnings.catch_warnings():  # the size is checked here, not warned about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            fmt = (img.format or "").lower()
            check_pixels(img.size, label, "(inline bytes)", max_pixels)
    except ImageError as e:
        raise RecordError(str(e)) from e
    except Image.DecompressionBombError as e:
        raise RecordError(f"{label}: image is too large to decode ({e})") from e
    except (UnidentifiedImageError, OSError) as e:
        raise RecordError(f"{label}: image bytes are not a readable image ({e})") from e
    return {"jpeg": ".jpg", "": ".img"}.get(fmt, f".{fmt}")


def _parquet_files(path: Path) -> list[Path]:
    """A parquet file itself, or the sorted *.parquet files of a folder (the hub splits into shards)."""
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path} holds no *.parquet files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [path]


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, row) of each row, label = ``file row N (0-based; ds_name=..., idx=...)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in _parquet_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as e:  # ArrowInvalid: not a parquet file at all
            raise RecordError(f"{file}: not a readable parquet file ({e})") from e
        missing = [c for c in RLAIFV_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise RecordError(f"{file}: not an RLAIF-V-Dataset parquet, missing column(s) {missing}")
        n = 0
        for batch in pf.iter_batches(batch_size=64, columns=list(RLAIFV_COLUMNS)):
            for row in batch.to_pylist():
                yield f"{file} row {n} (0-based; ds_name={row['ds_name']!r}, idx={row['idx']!r})", row
                n += 1


def _check_row(row: dict[str, Any], label: str) -> tuple[bytes, dict[str, Any]]:
    """The row's image bytes and parsed origin_split; RecordError naming the row if malformed."""
    for name in ("ds_name", "idx"):
        if row[name] is None or str(row[name]) == "":
            raise RecordError(f"{label}: empty {name}")
    for name in ("question", "chosen", "rejected"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise RecordError(f"{label}: {name} is empty or not a string")
    image = row["image"]
    data = image.get("bytes") if isinstance(image, dict) else None
    if not data:
        raise RecordError(f"{label}: image has no bytes")
    try:
        split = json.loads(row["origin_split"]) if row["origin_split"] else {}
    except (TypeError, json.JSONDecodeError) as e:
        raise RecordError(f"{label}: origin_split is not a JSON string ({e})") from e
    if not isinstance(split, dict):
        raise RecordError(f"{label}: origin_split is JSON but not an object: {split!r}")
    return data, split


def _store_image(data: bytes, image_dir: Path | None, label: str) -> str | None:
    """Write the bytes as ``image_dir/<sha256>.<ext>`` (once; never re-encoded); its path."""
    ext = _extension(data, label)
    if image_dir is None:
        return None
    target = image_dir / f"{_digest(data)}{ext}"
    if not target.exists():
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


def _prompt_of(row: dict[str, Any], data: bytes, split: dict[str, Any], image: str | None) -> Prompt:
    """The Prompt of a row: id ``ds_name/idx``, image by path (or inline bytes), row metadata."""
    meta = {"source": "RLAIF-V-Dataset", "ds_name": row["ds_name"], "idx": str(row["idx"]),
            "origin_dataset": row["origin_dataset"], "origin_split": split, "image_path": row["image_path"],
            "image_sha256": hashlib.sha256(data).hexdigest()}
    if "type" in split:
        meta["question_type"] = split["type"]
    return Prompt(prompt_id=f"{row['ds_name']}/{row['idx']}", question=row["question"], image=image,
                  image_bytes=None if image is not None else data, metadata=meta)


def _candidate_id(prompt_id: str, text: str, texts: dict[str, dict[str, str]]) -> str:
    """``prompt#k``, k numbering the distinct answer texts of a prompt in order of appearance."""
    known = texts.setdefault(prompt_id, {})
    return known.setdefault(text, f"{prompt_id}#{len(known)}")


def from_rlaifv_dataset(parquet_path: PathLike, image_dir: PathLike | None) -> tuple[list[Prompt], list[PreferencePair]]:
    """Import RLAIF-V-Dataset parquet (a file or a folder of them) as Prompts and PreferencePairs.

    Images are written to ``image_dir`` as ``<sha256 of the bytes>.<ext>`` (the original bytes),
    or with ``image_dir=None`` kept inline in ``Prompt.image_bytes``. ``prompt_id`` is
    ``"{ds_name}/{idx}"``; rows sharing it must share question and image (several pairs of one
    prompt). Answers get candidate ids ``prompt#k`` per distinct text. The data carries no
    labeler scores: chosen_score = 1, rejected_score = 0 (a binary preference), recorded in the
    provenance. A malformed row raises RecordError naming the file and row; an exact duplicate
    pair is skipped with a warning.
    """
    out_dir = Path(image_dir) if image_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    prompts: dict[str, Prompt] = {}
    pairs: dict[str, PreferencePair] = {}
    texts: dict[str, dict[str, str]] = {}
    for label, row in _rows(Path(parquet_path)):
        data, split = _check_row(row, label)
        prompt = _prompt_of(row, data, split, _store_image(data, out_dir, label))
        first = prompts.setdefault(prompt.prompt_id, prompt)
        if (first.question, first.metadata["image_sha256"]) != (prompt.question, prompt.metadata["image_sha256"]):
            raise RecordError(f"{label}: prompt {prompt.prompt_id!r} seen before with another question or image")
        pair = PreferencePair(prompt_id=prompt.prompt_id, question=prompt.question, image=prompt.image,
                              chosen=row["chosen"], rejected=row["rejected"],
                              chosen_id=_candidate_id(prompt.prompt_id, row["chosen"], texts),
                              rejected_id=_candidate_id(prompt.prompt_id, row["rejected"], texts),
                              chosen_score=1.0, rejected_score=0.0,
                              provenance={"source": label, "origin_split": split,
                                          "scores": "binary: the dataset holds no labeler scores"})
        if pair.id in pairs:
            log.warning("%s: duplicate of pair %r (%s), skipped", label, pair.id, pairs[pair.id].provenance["source"])
            continue
        pairs[pair.id] = pair
    return list(prompts.values()), list(pairs.values())


IMPORT_DONE = "import.json"


def import_rlaifv(parquet_path: PathLike, out: PathLike) -> tuple[dict[str, Any], bool]:
    """``rlaifv import-rlaifv``: prompts.jsonl, images/ and pairs/ in ``out``; (info, done before).

    Atomic: everything is built in ``out.importing/`` and renamed to ``out`` at the end (a kill
    leaves no half import; the rerun starts the temporary folder over). Idempotent: a finished
    ``out`` holds ``import.json`` (source and its sha256); rerunning on the same source does
    nothing, another source is refused. Image paths are relative to ``out``, so the folder moves.
    """
    from .store import RecordStore, StoreError, _fsync_dir, fingerprint

    source, out = Path(parquet_path), Path(out)
    digest = fingerprint(source)
    if (out / IMPORT_DONE).exists():
        info = json.loads((out / IMPORT_DONE).read_text())
        if info.get("sha256") != digest:
            raise StoreError(f"{out} already holds the import of {info.get('source')}, not of {source} (other content); "
                             "use a new --out folder")
        return info, True
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not a finished import (no {IMPORT_DONE}); use a new --out folder or delete it")
    tmp = out.with_name(out.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed import's leftovers: start over
    try:
        prompts, pairs = from_rlaifv_dataset(source, tmp / "images")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    relative = lambda path: os.path.relpath(path, tmp) if path else path  # noqa: E731
    prompts = [dataclasses.replace(p, image=relative(p.image)) for p in prompts]
    pairs = [dataclasses.replace(q, image=relative(q.image)) for q in pairs]
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    with RecordStore(tmp / "pairs", PreferencePair) as store:
        store.write(pairs)
    info = {"source": str(source.resolve()), "sha256": digest, "prompts": len(prompts), "pairs": len(pairs)}
    (tmp / IMPORT_DONE).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    _fsync_dir(out.parent if str(out.parent) else Path("."))
    return info, False
