"""The DPO objective on summed answer log-probs (RLAIF-V Sec. 3.2; Rafailov et al. 2023, Eq. 7).

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )
           + nll_weight * ( -log pi(y_w|x) / |y_w| )

``log pi(y|x)`` is the sum over the answer tokens (answer + EOS, the tokens ``chat.collate``
supervises) of the token log-probs. The optional NLL term on the chosen answer (per-token mean,
weight 0 in the paper) keeps a tiny model's grammar intact (sandbox notes, finding 5).
The implicit rewards ``beta * (log pi - log pi_ref)`` are returned for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.chat import IGNORE_INDEX


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, S-1] of ``labels`` under ``logits`` (shifted), and the label mask.

    Position t's logits predict token t+1; positions whose label is ``IGNORE_INDEX`` get 0.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs [B], number of answer tokens [B])."""
    logp, mask = token_logps(logits, labels)
    return logp.sum(-1), mask.sum(-1)


@dataclass
class DPOOutput:
    """Loss (scalar, batch mean) and per-pair parts for logging."""

    loss: torch.Tensor
    losses: torch.Tensor  # [B] DPO part per pair
    chosen_rewards: torch.Tensor  # [B] beta * (log pi - log pi_ref) of the chosen answer (detached)
    rejected_rewards: torch.Tensor  # [B]
    nll: torch.Tensor  # scalar, mean per-token NLL of the chosen answers (detached)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    chosen_tokens: torch.Tensor | None = None,
    nll_weight: float = 0.0,
) -> DPOOutput:
    """Sigmoid DPO on summed log-probs [B] (module docstring), plus the optional chosen-answer NLL.

    ``chosen_tokens`` [B] (answer token counts) is needed when ``nll_weight > 0``.
    """
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    loss = losses.mean()
    nll = torch.zeros((), device=losses.device)
    if chosen_tokens is not None:
        nll = (-policy_chosen / chosen_tokens.clamp(min=1)).mean()
    if nll_weight > 0:
        if chosen_tokens is None:
            raise ValueError("nll_weight > 0 needs chosen_tokens")
        loss = loss + nll_weight * nll
    return DPOOutput(
        loss=loss, losses=losses.detach(),
        chosen_rewards=(beta * (policy_chosen - ref_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
        nll=nll.detach(),
    )
