"""Conquer (RLAIF-V Sec. 3.2): the labeler VLM answers each claim's yes/no question.

p_yes = P(yes) + P(Yes) and p_no = P(no) + P(No) of the first answer token, from one forward
pass (no ``generate``); a claim is rejected iff p_no >= p_yes. The first answer token is where
the labeler's own chat template puts it, and the yes/no ids are every spacing variant of the
words there (``models/template.py``), unless ``yes_tokens`` / ``no_tokens`` override them.
p_yes and p_no are stored unnormalised, so p_yes + p_no is the labeler's yes/no probability
mass per question: :func:`mass_summary` reports its distribution and warns when the mean falls
below ``min_mean_mass`` (a labeler that is not answering yes/no gives noise verdicts). All questions about one image
share one encoding of the image and the common prompt prefix: the prefix is computed once and
its KV cache serves a batch of question suffixes (``models/prefix.py``).

Deviation switches, off by default:
* ``repetition_penalty``: the reference code read probabilities after a repetition penalty
  (1.1 OmniLMM, 1.2 MiniCPM-V) over the prompt tokens; since the prompt contains "yes" and
  "no", this shifts exactly the tokens compared. Set it to reproduce the reference.
* ``mode='describe_then_answer'``: a **sandbox-only stand-in** where the labeler first writes
  its own description of the image, which is kept in context before each question. It is not
  the method's labeler and is named as such in every output.
* ``mode='describe_then_match'``: a **sandbox-only stand-in** that needs no yes/no skill: the
  labeler writes its own description, and a claim is accepted iff the sandbox parser finds the
  claimed object with the same stated attributes in it (p_yes = 1 or 0). The labeler's errors
  are then its perception errors only. For the holistic ablation (claim ids ending in
  ``/holistic``: the whole answer is the claim) the answer is accepted iff every object it
  mentions matches. Used where the sandbox labeler's yes/no answers are not
  good enough (see RESULTS.md); never for real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from ..models.generate import generate_answers, score_yes_no
from ..models.template import override_yes_no_ids
from ..models.yesno import YesNoIds, p_yes_no, yes_no_ids
from ..records import ClaimScore, PolarQuestion
from ..sandbox.tasks import DESCRIBE_PROMPT

MODES = ("direct", "describe_then_answer", "describe_then_match")


@dataclass
class ConquerConfig:
    """Settings of ``rlaifv conquer``."""

    model: str = "sandbox:labeler"  # labeler folder, sandbox:labeler, or the policy (self-feedback)
    mode: str = "direct"  # direct | describe_then_answer (sandbox-only stand-in)
    share_prefix: bool = True  # encode image + common prefix once per image (False: naive, for checks)
    batch_size: int = 32  # question suffixes per forward
    repetition_penalty: float | None = None  # reference-compatible deviation switch (e.g. 1.1)
    describe_prompt: str = DESCRIBE_PROMPT
    describe_max_new_tokens: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    yes_tokens: list | None = None  # override: first-answer tokens read as "yes" (vocabulary strings or ids), e.g. ["▁Yes", "▁yes"]
    no_tokens: list | None = None  # override: first-answer tokens read as "no"; both or neither
    min_mean_mass: float = 0.5  # warn when the mean yes+no probability mass falls below this
    #: longest question prompt (image [+ description] + question tokens) scored; longer ones are bad
    #: inputs (the prompt's record is refused). 0: the labeler's context (``models/context.py``)
    max_prompt_tokens: int = 0
    max_image_pixels: int = 40_000_000  # larger images are bad inputs, refused from their header (0: no limit)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"conquer mode {self.mode!r}: expected one of {MODES}")
        if (self.yes_tokens is None) != (self.no_tokens is None):
            raise ValueError("conquer: give both yes_tokens and no_tokens, or neither")
        if not 0.0 <= self.min_mean_mass <= 1.0:
            raise ValueError(f"conquer.min_mean_mass must be in [0, 1], got {self.min_mean_mass}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


def _penalised(logits: torch.Tensor, input_ids: Sequence[Sequence[int]], penalty: float) -> torch.Tensor:
    """HF's repetition penalty over each row's input tokens (the reference code's processed scores)."""
    out = logits.clone()
    for r, ids in enumerate(input_ids):
        idx = torch.tensor(sorted(set(ids)), dtype=torch.long)
        s = out[r, idx]
        out[r, idx] = torch.where(s < 0, s * penalty, s / penalty)
    return out


def _score_image(model, processor, image: Image.Image, questions: list[str], history, cfg: ConquerConfig, ids: YesNoIds) -> list[tuple[float, float]]:
    if cfg.repetition_penalty is None and cfg.share_prefix:
        from ..models.prefix import score_yes_no_shared

        return score_yes_no_shared(model, processor, [image], [questions], batch_size=cfg.batch_size, ids=ids, histories=[history])[0]
    if cfg.repetition_penalty is None:
        hist = [history] * len(questions) if history else None
        y, n = score_yes_no(model, processor, [image] * len(questions), questions, ids, cfg.batch_size, histories=hist)
        return list(zip(y, n))
    return _score_with_penalty(model, processor, image, questions, history, cfg, ids)


@torch.no_grad()
def _score_with_penalty(model, processor, image, questions, history, cfg: ConquerConfig, ids: YesNoIds) -> list[tuple[float, float]]:
    from ..models.chat import collate

    out: list[tuple[float, float]] = []
    for i in range(0, len(questions), cfg.batch_size):
        qs = questions[i : i + cfg.batch_size]
        batch = collate(processor, [image] * len(qs), qs, padding_side="left", histories=[history] * len(qs) if history else None)
        logits = model(**batch).logits[:, -1, :]
        rows = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
        y, n = p_yes_no(_penalised(logits.float(), rows, cfg.repetition_penalty), ids)
        out += list(zip(y.tolist(), n.tolist()))
    return out


def labeler_yes_no_ids(processor, cfg: ConquerConfig) -> YesNoIds:
    """The configured override, else the ids the labeler's own template puts first."""
    if cfg.yes_tokens is not None and cfg.no_tokens is not None:
        return override_yes_no_ids(processor, cfg.yes_tokens, cfg.no_tokens)
    return yes_no_ids(processor)


def mass_summary(scores: Sequence[ClaimScore], min_mean_mass: float = 0.5) -> dict:
    """Distribution of the yes+no probability mass (p_yes + p_no) over scored questions.

    ``warning`` is a sentence when the mean is below ``min_mean_mass``: the labeler's first
    answer token is mostly neither yes nor no, so its verdicts are close to noise.
    """
    masses = sorted(s.p_yes + s.p_no for s in scores)
    if not masses:
        return {"questions": 0, "warning": None}

    def q(f: float) -> float:
        return round(masses[min(len(masses) - 1, int(f * len(masses)))], 4)

    mean = sum(masses) / len(masses)
    low = sum(m < min_mean_mass for m in masses)
    out = {"questions": len(masses), "mean": round(mean, 4), "min": round(masses[0], 4), "p10": q(0.1), "median": q(0.5),
           "max": round(masses[-1], 4), "below_threshold": low, "threshold": min_mean_mass, "warning": None}
    if mean < min_mean_mass:
        out["warning"] = (f"the labeler's yes+no probability mass is low (mean {mean:.3f} < {min_mean_mass}; {low} of "
                          f"{len(masses)} questions below): its first answer token is mostly neither yes nor no, so the "
                          "verdicts are close to noise. Check that the labeler answers yes/no questions, or set "
                          "conquer.yes_tokens / no_tokens")
    return out


def conquer(model, processor, groups: Sequence[tuple[Image.Image, list[PolarQuestion]]], cfg: ConquerConfig) -> list[ClaimScore]:
    """Score every question; ``groups`` holds the questions about each image together."""
    ids = labeler_yes_no_ids(processor, cfg)
    history_of: list[list[tuple[str, str]]] = [[] for _ in groups]
    if cfg.mode == "describe_then_match":
        return _describe_then_match(model, processor, groups, cfg)
    if cfg.mode == "describe_then_answer":
        texts = _describe(model, processor, groups, cfg)
        history_of = [[(cfg.describe_prompt, t)] for t in texts]
    check_conquer_prompts(model, processor, groups, history_of, cfg)
    out: list[ClaimScore] = []
    for (image, questions), history in zip(groups, history_of):
        if not questions:
            continue
        scores = _score_image(model, processor, image, [q.question for q in questions], history, cfg, ids)
        out += [ClaimScore(claim_id=q.claim_id, question=q.question, p_yes=float(y), p_no=float(n)) for q, (y, n) in zip(questions, scores)]
    return out


def check_conquer_prompts(model, processor, groups: Sequence[tuple[Image.Image, list[PolarQuestion]]],
                          histories: Sequence[Sequence[tuple[str, str]]], cfg: ConquerConfig) -> None:
    """PromptTooLongError naming the first claim whose question prompt exceeds the limit, before it is scored.

    Direct mode checks before any forward; ``describe_then_answer`` after the description is
    written (it is part of the prompt). ``describe_then_match`` feeds no question to the model.
    """
    from ..models.context import check_question_lengths, prompt_token_limit

    limit, why = prompt_token_limit(model, cfg.max_prompt_tokens, 0, "conquer")
    for (image, questions), history in zip(groups, histories):
        check_question_lengths(processor, image, [f"claim {q.claim_id!r}" for q in questions], [q.question for q in questions],
                               limit, why, history)


def _describe(model, processor, groups, cfg: ConquerConfig) -> list[str]:
    """The labeler's greedy description of each group's image, one generation call per image.

    Batching images together would make a description depend on its batch companions (left
    padding and the row count change float rounding, which can flip a greedy token), and so
    on how the runner cut its batches; see ``stages/sample.py``.
    """
    return [generate_answers(model, processor, [image], [cfg.describe_prompt], max_new_tokens=cfg.describe_max_new_tokens)[0]
            for image, _ in groups]


def _describe_then_match(model, processor, groups, cfg: ConquerConfig) -> list[ClaimScore]:
    from ..sandbox.parse import parse_answer, parse_sentence

    texts = _describe(model, processor, groups, cfg)
    out: list[ClaimScore] = []
    for (_, questions), text in zip(groups, texts):
        seen = parse_answer(text).mentions
        for q in questions:
            if q.claim_id.endswith("/holistic"):  # the holistic ablation: the whole answer, every object must match
                claimed = parse_answer(q.claim).mentions
                found = bool(claimed) and all(any(_same(c, m) for m in seen) for c in claimed)
            else:
                ok, claim = parse_sentence(q.claim)
                found = ok and claim is not None and any(_same(claim, m) for m in seen)
            out.append(ClaimScore(claim_id=q.claim_id, question=q.question, p_yes=1.0 if found else 0.0, p_no=0.0 if found else 1.0))
    return out


def _same(claim, mention) -> bool:
    """The described object matches every attribute the claim states."""
    return claim.shape == mention.shape and all(
        getattr(claim, a) is None or getattr(claim, a) == getattr(mention, a) for a in ("colour", "size", "cell")
    )

