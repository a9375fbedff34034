"""p_yes / p_no of a VLM's first answer token (RLAIF-V Sec. 3.2, "conquer").

p_yes = P(yes) + P(Yes) and p_no = P(no) + P(No), read from the softmax over the full
vocabulary at the first answer position (after the chat template's generation prompt). The
token ids come from the model's own chat template (``models/template.py``): each word is
encoded right after the template's generation prompt, in the template's own spacing and in the
other spacings, so leading-space variants ("▁Yes", "ĠYes") and BPE merges are handled per model.
p_yes + p_no (before any normalisation) is the yes/no probability mass: a labeler that is not
answering yes/no at that position has a low mass, and conquer reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


@dataclass(frozen=True)
class YesNoIds:
    yes: tuple[int, ...]
    no: tuple[int, ...]


def yes_no_ids(processor) -> YesNoIds:
    """yes/Yes and no/No ids as the first answer token under ``processor``'s own chat template.

    Every spacing variant the template can produce there is included, deduplicated
    (``models/template.py``: e.g. "▁Yes" after LLaVA-1.5's ``ASSISTANT:``, "Yes" after ChatML's
    ``assistant\n``). ``processor`` is a VLM processor or a text tokenizer.
    """
    from .template import template_yes_no_ids

    return template_yes_no_ids(processor)


def p_yes_no(last_logits: torch.Tensor, ids: YesNoIds) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_yes, p_no) from last-position logits [B, V]; NaN logits raise instead of scoring."""
    if not torch.isfinite(last_logits).all():
        bad = (~torch.isfinite(last_logits)).any(dim=-1).nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite logits in batch rows {bad}")
    probs = torch.softmax(last_logits.float(), dim=-1)
    return probs[:, list(ids.yes)].sum(-1), probs[:, list(ids.no)].sum(-1)
