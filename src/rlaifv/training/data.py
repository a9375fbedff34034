"""DPO training data: pairs + their prompts' images, validated, and the batches of each epoch.

A pair whose answer is empty, whose image is missing/corrupt/above the pixel limit, or whose
(prompt + answer) is longer than ``max_length`` (default: the model's context, as for the
prompt-length guard of sampling, ``models/context.py``) is a bad input: an error naming the pair, or (``on_error='skip'``) a
line in ``rejects.jsonl``. Nothing is ever truncated (truncation could cut image tokens).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, load_image
from ..models.chat import answer_ids, encode_prompt
from ..records import PreferencePair, Prompt, RecordError
from ..store import RejectsFile, handle_bad, read_inputs


@dataclass
class TrainExample:
    """One preference pair ready to collate (image decoded once)."""

    pair: PreferencePair
    image: Image.Image


def _prompts_base(prompts_path: Path) -> Path:
    return prompts_path.parent if prompts_path.is_file() else prompts_path


def load_pairs(pairs_path: str | Path, prompts_path: str | Path, on_error: str = "raise",
               rejects_dir: Path | None = None) -> tuple[list[PreferencePair], dict[str, Prompt], Path]:
    """Pairs, the prompts they came from (by id) and the folder that resolves image paths.

    A malformed line (bad JSON, a missing field, a truncated last line) stops with an error
    naming file:line, or with ``on_error='skip'`` goes to ``rejects_dir/rejects.jsonl``.
    """
    pairs = read_inputs(Path(pairs_path), PreferencePair, on_error, rejects_dir, "train", what="preference pairs")  # type: ignore[arg-type]
    prompts = {p.prompt_id: p for p in read_inputs(Path(prompts_path), Prompt, on_error, rejects_dir, "train")}  # type: ignore[arg-type]
    return pairs, prompts, _prompts_base(Path(prompts_path))


def _problem(pair: PreferencePair, prompts: dict[str, Prompt]) -> str | None:
    if pair.prompt_id not in prompts:
        return f"prompt {pair.prompt_id!r} is not in the prompts file"
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty chosen or rejected answer"
    if pair.chosen.strip() == pair.rejected.strip():
        return "chosen and rejected answers are identical (no preference to learn; DPO loss and gradient are constant)"
    return None


def prepare_examples(pairs: Sequence[PreferencePair], prompts: dict[str, Prompt], base_dir: Path | None, processor,
                     max_length: int = 0, on_error: str = "raise", rejects_dir: Path | None = None,
                     max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[TrainExample]:
    """Validate every pair (see module docstring) and decode each prompt's image once.

    ``max_length`` (0: no check) is the longest prompt + answer in tokens; ``train`` passes the
    model's context unless the config sets one (:func:`train_max_length`).
    """
    rejects = RejectsFile(rejects_dir, stage="train") if rejects_dir is not None and on_error == "skip" else None
    images: dict[str, Image.Image] = {}
    out: list[TrainExample] = []
    try:
        for pair in pairs:
            reason = _problem(pair, prompts)
            if reason is None and max_length > 0:
                reason = _too_long_text(processor, pair, max_length)  # before decoding the image
            if reason is None and pair.prompt_id not in images:
                try:
                    images[pair.prompt_id] = load_image(prompts[pair.prompt_id], base_dir, max_pixels)
                except ImageError as e:
                    reason = str(e)
            if reason is None and max_length > 0:
                n = encode_prompt(processor, images[pair.prompt_id], pair.question)["input_ids"].shape[1]
                longest = n + max(len(answer_ids(processor, pair.chosen)), len(answer_ids(processor, pair.rejected)))
                if longest > max_length:
                    reason = _too_long(longest, max_length)
            if reason is not None:
                handle_bad(f"pair {pair.id!r}", reason, on_error, rejects, record_id=pair.id, stage="train")  # raises unless skip
                continue
            out.append(TrainExample(pair, images[pair.prompt_id]))
    finally:
        if rejects is not None:
            rejects.close()
    _report_refused(len(pairs), len(out), rejects_dir if rejects is not None else None)
    return out


def _report_refused(n_pairs: int, n_kept: int, rejects_dir: Path | None) -> None:
    """No pair left: an error; half or more refused: a loud warning (never a silent small run)."""
    where = f" (see {Path(rejects_dir) / 'rejects.jsonl'})" if rejects_dir is not None else ""
    if n_kept == 0:
        raise RecordError(f"no usable preference pairs to train on: all {n_pairs} pairs were refused{where}")
    if 2 * (n_pairs - n_kept) >= n_pairs:
        warnings.warn(f"train: {n_pairs - n_kept} of {n_pairs} preference pairs refused, training on {n_kept}{where}", stacklevel=3)


def train_max_length(model, max_length: int) -> int:
    """The configured ``max_length`` (> 0), else the model's context (0 when it states none):
    the same default as the prompt-length guard of sampling and conquer (``models/context.py``)."""
    from ..models.context import model_context

    return max_length if max_length > 0 else (model_context(model) or 0)


def _too_long(n: int, max_length: int, at_least: bool = False) -> str:
    return (f"the pair is {'at least ' if at_least else ''}{n} tokens (image + question + longer answer), longer than "
            f"max_length {max_length}; never truncated (image tokens could be cut), refused before any forward")


def _too_long_text(processor, pair: PreferencePair, max_length: int) -> str | None:
    """The reason when the question and answer text alone exceed ``max_length`` (no image processing)."""
    tok = processor.tokenizer
    answer = max(len(answer_ids(processor, pair.chosen)), len(answer_ids(processor, pair.rejected)))
    n = len(tok(pair.question, add_special_tokens=False)["input_ids"]) + answer
    if n > max_length:
        return _too_long(n, max_length, at_least=True)
    return None


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, min_size: int = 1) -> list[list[int]]:
    """Example indices of one epoch, shuffled by (seed, epoch), cut into batches.

    A last batch smaller than ``min_size`` (fewer pairs than processes x accumulation steps) is
    dropped so that every process does the same number of backward passes.
    """
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= min_size]
