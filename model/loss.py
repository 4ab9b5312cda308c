"""Next-token loss over the unified vocabulary, with the optional z-loss of PaLM / Chameleon."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_losses(logits: torch.Tensor, targets: torch.Tensor, *, z_loss: float = 0.0,
                 ignore_index: int = IGNORE) -> torch.Tensor:
    """Per-token loss (B, T) in float32: cross-entropy + z_loss * logsumexp(logits)^2.

    logits: (B, T, V); targets: (B, T) with `ignore_index` where no loss is wanted (those
    positions get 0). The z-loss keeps the softmax normaliser near 1, which stabilises mixed
    image/text training.
    """
    flat = logits.float().flatten(0, 1)
    target = targets.flatten()
    loss = F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="none")
    if z_loss:
        lse = torch.logsumexp(flat, dim=-1)
        loss = loss + z_loss * lse.square() * (target != ignore_index)
    return loss.view_as(targets)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, *, z_loss: float = 0.0,
            ignore_index: int = IGNORE) -> torch.Tensor:
    """Mean of `token_losses` over the positions that are not ignored."""
    valid = (targets != ignore_index).sum().clamp(min=1)
    return token_losses(logits, targets, z_loss=z_loss, ignore_index=ignore_index).sum() / valid
