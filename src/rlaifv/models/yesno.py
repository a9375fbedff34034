"""p_yes / p_no of a VLM's first answer token (RLAIF-V Sec. 3.2, "conquer").

p_yes = P(yes) + P(Yes) and p_no = P(no) + P(No), read from the softmax over the full
vocabulary at the first answer position (after the chat template's generation prompt). The
token ids are derived from the tokenizer by encoding each word right after the assistant
prefix, so leading-space variants and BPE merges are handled per architecture.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


@dataclass(frozen=True)
class YesNoIds:
    yes: tuple[int, ...]
    no: tuple[int, ...]


def first_token_after(tokenizer, prefix: str, word: str) -> int:
    """The first token id that ``word`` adds when it follows ``prefix`` (BPE-merge safe)."""
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(base), len(full)) and base[n] == full[n]:
        n += 1
    new = full[n:]
    if not new:
        raise ValueError(f"tokenizer adds no token for {word!r} after the assistant prefix")
    if len(new) > 1:
        warnings.warn(f"{word!r} is {len(new)} tokens after the assistant prefix; using its first token", stacklevel=2)
    return new[0]


def yes_no_ids(tokenizer, assistant_prefix: str = "<|im_start|>assistant\n") -> YesNoIds:
    """Token ids of yes/Yes and no/No as the first answer token. Duplicates are removed."""
    yes = tuple(dict.fromkeys(first_token_after(tokenizer, assistant_prefix, w) for w in YES_WORDS))
    no = tuple(dict.fromkeys(first_token_after(tokenizer, assistant_prefix, w) for w in NO_WORDS))
    if set(yes) & set(no):
        raise ValueError(f"yes and no share a token id ({set(yes) & set(no)}); cannot score polar answers")
    return YesNoIds(yes, no)


def p_yes_no(last_logits: torch.Tensor, ids: YesNoIds) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_yes, p_no) from last-position logits [B, V]; NaN logits raise instead of scoring."""
    if not torch.isfinite(last_logits).all():
        bad = (~torch.isfinite(last_logits)).any(dim=-1).nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite logits in batch rows {bad}")
    probs = torch.softmax(last_logits.float(), dim=-1)
    return probs[:, list(ids.yes)].sum(-1), probs[:, list(ids.no)].sum(-1)
