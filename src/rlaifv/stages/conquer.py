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

Modes (``mode``): a registry of :class:`ConquerMode` (:func:`register_conquer_mode`). This module
registers only ``direct``, the method's conquer above. Other ways of judging claims plug in
from outside without this package importing them: the sandbox's stand-ins ``describe_then_answer``
and ``describe_then_match`` live in ``rlaifv/sandbox/standins.py`` and register themselves when
it is imported (the ``rlaifv`` CLI does; the stages never import the sandbox). A mode may refuse
prompts it cannot judge (:func:`check_conquer_inputs`): the stand-ins refuse any prompt without
a sandbox scene, i.e. every real image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from ..backends.base import EndpointOptions, VLLMOptions, check_backend
from ..config import ConfigError
from ..models.generate import score_yes_no
from ..models.options import LoadOptions
from ..models.template import override_yes_no_ids
from ..models.yesno import YesNoIds, p_yes_no, yes_no_ids
from ..records import ClaimScore, PolarQuestion, Prompt

#: (image, its questions) per image: what a conquer mode judges
Groups = Sequence[tuple[Image.Image, list[PolarQuestion]]]


@dataclass(frozen=True)
class ConquerMode:
    """One way of judging claims, registered under ``name`` (the ``conquer.mode`` value).

    ``run(model, processor, groups, cfg)`` returns one ClaimScore per question; ``check_prompts``
    (optional) raises ConfigError for prompts the mode cannot judge, before any work.
    """

    name: str
    run: Callable[..., list[ClaimScore]]
    check_prompts: Callable[[Sequence[Prompt]], None] | None = None
    description: str = ""


#: name -> mode; ``direct`` is registered below, other modes by whoever provides them
CONQUER_MODES: dict[str, ConquerMode] = {}


def register_conquer_mode(mode: ConquerMode) -> None:
    """Make ``mode.name`` a valid ``conquer.mode`` (re-registering the same name replaces it)."""
    CONQUER_MODES[mode.name] = mode


def conquer_mode(name: str) -> ConquerMode:
    """The registered mode ``name``; ConfigError listing the registered ones otherwise."""
    if name not in CONQUER_MODES:
        raise ConfigError(f"conquer mode {name!r} is not registered (registered: {', '.join(sorted(CONQUER_MODES))}); a module "
                          "registers one on import with register_conquer_mode (the rlaifv CLI loads the sandbox-only "
                          "stand-ins describe_then_answer / describe_then_match)")
    return CONQUER_MODES[name]


def check_conquer_inputs(cfg: "ConquerConfig", prompts: Sequence[Prompt]) -> None:
    """ConfigError before any work if ``cfg.mode`` cannot judge these prompts (e.g. a sandbox-only
    stand-in given real images)."""
    mode = conquer_mode(cfg.mode)
    if mode.check_prompts is not None:
        mode.check_prompts(prompts)


@dataclass
class ConquerConfig(LoadOptions):
    """Settings of ``rlaifv conquer``.

    Model loading: the ``LoadOptions`` fields (``models/options.py``: device, dtype, device_map, max_memory,
    attn_implementation, load_in_4bit/8bit, trust_remote_code), flat in this section.
    """

    model: str = ""  # labeler folder, sandbox:labeler, or the policy (self-feedback); required
    mode: str = "direct"  # a registered mode: direct (the method), or a sandbox-only stand-in (rlaifv.sandbox.standins)
    share_prefix: bool = True  # encode image + common prefix once per image (False: naive, for checks)
    #: packed: an image's question suffixes in one sequence with a block mask (fastest; default); batched: one
    #: row and one prefix-cache copy per question (automatic fallback for models that cannot pack); naive: one
    #: full forward per question (for checks; also share_prefix: false). Same numbers within 1e-4.
    prefix_mode: str = "packed"
    pack_tokens: int = 2048  # packed mode: most question-suffix tokens per forward (bounds the mask and activations)
    batch_size: int = 32  # questions per forward in the batched and naive prefix modes (packed: pack_tokens)
    repetition_penalty: float | None = None  # reference-compatible deviation switch (e.g. 1.1)
    describe_prompt: str = "Describe the image in detail."  # describe-first modes (stand-ins): the labeler's own description
    describe_max_new_tokens: int = 256
    yes_tokens: list | None = None  # override: first-answer tokens read as "yes" (vocabulary strings or ids), e.g. ["▁Yes", "▁yes"]
    no_tokens: list | None = None  # override: first-answer tokens read as "no"; both or neither
    min_mean_mass: float = 0.5  # warn when the mean yes+no probability mass falls below this
    #: longest question prompt (image [+ description] + question tokens) scored; longer ones are bad
    #: inputs (the prompt's record is refused). 0: the labeler's context (``models/context.py``)
    max_prompt_tokens: int = 0
    max_image_pixels: int = 40_000_000  # larger images are bad inputs, refused from their header (0: no limit)
    #: hf (this process) | vllm (offline engine) | openai (an OpenAI-compatible server returning top-k log-probs):
    #: p_yes / p_no from the first answer token's top-k log-probs (``rlaifv/backends/``); mode direct only
    backend: str = "hf"
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)  # backend openai: the server (base_url, model, top_logprobs, ...)
    vllm: VLLMOptions = field(default_factory=VLLMOptions)  # backend vllm: the engine's options

    def __post_init__(self) -> None:
        super().__post_init__()
        conquer_mode(self.mode)  # ConfigError naming the registered modes
        check_backend("conquer", self.backend, self.endpoint, self.vllm)
        if self.backend != "hf" and (self.mode != "direct" or self.repetition_penalty is not None):
            raise ConfigError(f"conquer.backend {self.backend} reads the direct first-answer-token p_yes / p_no only: "
                              "mode must be direct and repetition_penalty unset (use backend hf for the others)")
        if (self.yes_tokens is None) != (self.no_tokens is None):
            raise ValueError("conquer: give both yes_tokens and no_tokens, or neither")
        if not 0.0 <= self.min_mean_mass <= 1.0:
            raise ValueError(f"conquer.min_mean_mass must be in [0, 1], got {self.min_mean_mass}")
        if self.prefix_mode not in ("packed", "batched", "naive"):
            raise ValueError(f"conquer.prefix_mode must be packed, batched or naive, got {self.prefix_mode!r}")
        if self.pack_tokens < 1:
            raise ValueError(f"conquer.pack_tokens must be >= 1, got {self.pack_tokens}")
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
    if cfg.repetition_penalty is None and cfg.share_prefix and cfg.prefix_mode != "naive":
        from ..models.prefix import score_yes_no_shared

        return score_yes_no_shared(model, processor, [image], [questions], batch_size=cfg.batch_size, ids=ids, histories=[history],
                                   mode=cfg.prefix_mode, pack_tokens=cfg.pack_tokens)[0]
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


def conquer(model, processor, groups: Groups, cfg: ConquerConfig) -> list[ClaimScore]:
    """Score every question with ``cfg.mode``; ``groups`` holds the questions about each image together."""
    return conquer_mode(cfg.mode).run(model, processor, groups, cfg)


def score_direct(model, processor, groups: Groups, cfg: ConquerConfig,
                 histories: Sequence[list[tuple[str, str]]] | None = None) -> list[ClaimScore]:
    """The method's conquer: p_yes / p_no at the first answer token of each question.

    ``histories`` (one per group) are earlier (question, answer) turns kept in context before
    each question (a describe-first stand-in passes the labeler's own description).
    """
    ids = labeler_yes_no_ids(processor, cfg)
    history_of = list(histories) if histories is not None else [[] for _ in groups]
    check_conquer_prompts(model, processor, groups, history_of, cfg)
    out: list[ClaimScore] = []
    for (image, questions), history in zip(groups, history_of):
        if not questions:
            continue
        scores = _score_image(model, processor, image, [q.question for q in questions], history, cfg, ids)
        out += [ClaimScore(claim_id=q.claim_id, question=q.question, p_yes=float(y), p_no=float(n)) for q, (y, n) in zip(questions, scores)]
    return out


def score_via(backend, groups: Groups, cfg: ConquerConfig) -> tuple[list[ClaimScore], list[str]]:
    """The direct read-out through a serving backend (``cfg.backend`` vllm / openai): ClaimScores and
    the ids of the claims whose yes or no word was outside the returned top-k (its p is then the
    sum over the tokens present, a lower bound; counted in the stage summary)."""
    out: list[ClaimScore] = []
    outside: list[str] = []
    for image, questions in groups:
        if not questions:
            continue
        for q, r in zip(questions, backend.yes_no(image, [q.question for q in questions])):
            out.append(ClaimScore(claim_id=q.claim_id, question=q.question, p_yes=float(r.p_yes), p_no=float(r.p_no)))
            if r.outside_top_k:
                outside.append(q.claim_id)
    return out, outside


register_conquer_mode(ConquerMode("direct", score_direct, description="the labeler's p_yes / p_no at the first answer token"))


def check_conquer_prompts(model, processor, groups: Sequence[tuple[Image.Image, list[PolarQuestion]]],
                          histories: Sequence[Sequence[tuple[str, str]]], cfg: ConquerConfig) -> None:
    """PromptTooLongError naming the first claim whose question prompt exceeds the limit, before it is scored.

    Direct mode checks before any forward; a describe-first mode after the description is
    written (it is part of the prompt).
    """
    from ..models.context import check_question_lengths, prompt_token_limit

    limit, why = prompt_token_limit(model, cfg.max_prompt_tokens, 0, "conquer")
    for (image, questions), history in zip(groups, histories):
        check_question_lengths(processor, image, [f"claim {q.claim_id!r}" for q in questions], [q.question for q in questions],
                               limit, why, history)
