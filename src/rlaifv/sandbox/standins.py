"""The sandbox-only stand-in conquer modes; importing this module registers them.

They are not the method's labeler (``stages/conquer.py``, mode ``direct``) and are named as
such in every config and result. Both refuse prompts without a sandbox scene in their
metadata, i.e. any real image (:func:`require_sandbox_prompts`):

* ``describe_then_answer``: the labeler first writes its own description of the image, which
  is kept in context before each yes/no question (then scored as ``direct`` scores).
* ``describe_then_match``: needs no yes/no skill: the labeler writes its own description, and
  a claim is accepted iff the sandbox parser finds the claimed object with the same stated
  attributes in it (p_yes = 1 or 0). The labeler's errors are then its perception errors only.
  For the holistic ablation (claim ids ending in ``/holistic``: the whole answer is the claim)
  the answer is accepted iff every object it mentions matches. Used where the sandbox labeler's
  yes/no answers are not good enough (see RESULTS.md).

The stages never import this module (``tests/test_stage_boundaries.py``); the ``rlaifv`` CLI
imports it so that ``--conquer-mode`` / ``conquer.mode`` can name these modes.
"""

from __future__ import annotations

from typing import Sequence

from ..config import ConfigError
from ..models.generate import generate_answers
from ..records import ClaimScore, Prompt
from ..stages.conquer import ConquerConfig, ConquerMode, Groups, register_conquer_mode, score_direct
from .parse import parse_answer, parse_sentence
from .prompts import scene_of

STANDIN_MODES = ("describe_then_answer", "describe_then_match")


def require_sandbox_prompts(mode: str, prompts: Sequence[Prompt]) -> None:
    """ConfigError unless every prompt carries a sandbox scene: a stand-in judges claims against
    the sandbox world and cannot judge a real image."""
    real = [p.prompt_id for p in prompts if scene_of(p) is None]
    if real:
        raise ConfigError(f"conquer mode {mode!r} is a sandbox-only stand-in and refuses real prompts: {len(real)} of "
                          f"{len(prompts)} prompts (first {real[0]!r}) have no sandbox scene in their metadata; use "
                          "--conquer-mode direct (conquer.mode: direct), the method's labeler")


def describe(model, processor, groups: Groups, cfg: ConquerConfig) -> list[str]:
    """The labeler's greedy description of each group's image, one generation call per image.

    Batching images together would make a description depend on its batch companions (left
    padding and the row count change float rounding, which can flip a greedy token), and so
    on how the runner cut its batches; see ``stages/sample.py``.
    """
    return [generate_answers(model, processor, [image], [cfg.describe_prompt], max_new_tokens=cfg.describe_max_new_tokens)[0]
            for image, _ in groups]


def describe_then_answer(model, processor, groups: Groups, cfg: ConquerConfig) -> list[ClaimScore]:
    """Direct yes/no scoring with the labeler's own description kept in context before each question."""
    texts = describe(model, processor, groups, cfg)
    return score_direct(model, processor, groups, cfg, histories=[[(cfg.describe_prompt, t)] for t in texts])


def describe_then_match(model, processor, groups: Groups, cfg: ConquerConfig) -> list[ClaimScore]:
    """Accept a claim iff the labeler's own description mentions its object with every stated attribute."""
    texts = describe(model, processor, groups, cfg)
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


def register() -> None:
    """Register both stand-ins (done on import; idempotent)."""
    register_conquer_mode(ConquerMode("describe_then_answer", describe_then_answer,
                                      lambda prompts: require_sandbox_prompts("describe_then_answer", prompts),
                                      description="sandbox-only stand-in: own description in context, then yes/no"))
    register_conquer_mode(ConquerMode("describe_then_match", describe_then_match,
                                      lambda prompts: require_sandbox_prompts("describe_then_match", prompts),
                                      description="sandbox-only stand-in: claim matched against the labeler's own description"))


register()
