"""DPO training data: pairs + their prompts' images, validated, and the batches of each epoch.

A pair whose answer is empty, whose image is missing/corrupt, or whose (prompt + answer) is
longer than ``max_length`` is a bad input: an error naming the pair, or (``on_error='skip'``) a
line in ``rejects.jsonl``. Nothing is ever truncated (truncation could cut image tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..images import ImageError, load_image
from ..models.chat import answer_ids, encode_prompt
from ..records import PreferencePair, Prompt
from ..store import RejectsFile, handle_bad, read_records


@dataclass
class TrainExample:
    """One preference pair ready to collate (image decoded once)."""

    pair: PreferencePair
    image: Image.Image


def _prompts_base(prompts_path: Path) -> Path:
    return prompts_path.parent if prompts_path.is_file() else prompts_path


def load_pairs(pairs_path: str | Path, prompts_path: str | Path) -> tuple[list[PreferencePair], dict[str, Prompt], Path]:
    """Pairs, the prompts they came from (by id) and the folder that resolves image paths."""
    pairs = list(read_records(Path(pairs_path), PreferencePair))
    prompts = {p.prompt_id: p for p in read_records(Path(prompts_path), Prompt)}
    return pairs, prompts, _prompts_base(Path(prompts_path))


def _problem(pair: PreferencePair, prompts: dict[str, Prompt]) -> str | None:
    if pair.prompt_id not in prompts:
        return f"prompt {pair.prompt_id!r} is not in the prompts file"
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty chosen or rejected answer"
    return None


def prepare_examples(pairs: Sequence[PreferencePair], prompts: dict[str, Prompt], base_dir: Path | None, processor,
                     max_length: int = 0, on_error: str = "raise", rejects_dir: Path | None = None) -> list[TrainExample]:
    """Validate every pair (see module docstring) and decode each prompt's image once."""
    rejects = RejectsFile(rejects_dir, stage="train") if rejects_dir is not None and on_error == "skip" else None
    images: dict[str, Image.Image] = {}
    out: list[TrainExample] = []
    try:
        for pair in pairs:
            reason = _problem(pair, prompts)
            if reason is None and pair.prompt_id not in images:
                try:
                    images[pair.prompt_id] = load_image(prompts[pair.prompt_id], base_dir)
                except ImageError as e:
                    reason = str(e)
            if reason is None and max_length > 0:
                n = encode_prompt(processor, images[pair.prompt_id], pair.question)["input_ids"].shape[1]
                longest = n + max(len(answer_ids(processor, pair.chosen)), len(answer_ids(processor, pair.rejected)))
                if longest > max_length:
                    reason = f"{longest} tokens > max_length {max_length} (never truncated: image tokens could be cut)"
            if reason is not None:
                handle_bad(f"pair {pair.id!r}", reason, on_error, rejects, record_id=pair.id, stage="train")  # raises unless skip
                continue
            out.append(TrainExample(pair, images[pair.prompt_id]))
    finally:
        if rejects is not None:
            rejects.close()
    if not out:
        raise ValueError("no usable preference pairs to train on")
    return out


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, min_size: int = 1) -> list[list[int]]:
    """Example indices of one epoch, shuffled by (seed, epoch), cut into batches.

    A last batch smaller than ``min_size`` (fewer pairs than processes x accumulation steps) is
    dropped so that every process does the same number of backward passes.
    """
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= min_size]
