"""The training objective: weighted next-token cross-entropy over the unified vocabulary, with
the optional z-loss, and the per-modality statistics (loss, accuracy) that training logs.

Targets and per-token weights come from the packed rows (train/packing.py, with the weights of
train/transforms.py). The loss of a step is

    sum_t w_t * (ce_t + z_loss * lse_t^2) / sum_t w_t

over every token of the step, on every rank: `normalizer` is the global weight sum, so DDP's
gradient average over ranks equals the gradient of one process holding all the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnitok.model.loss import IGNORE, cross_entropy_lse
from omnitok.tokenizers.vocab import Modality, Vocab

GROUPS = ("text", "image", "audio", "special")  # modality of a target, for the statistics
STAT_COLUMNS = ("ce", "correct", "count")  # per group; row len(GROUPS) holds (wloss, weight, 0)


def group_table(vocab: Vocab) -> torch.Tensor:
    """(vocab.padded_size,) int64: the GROUPS index of each id as a target (padding: special)."""
    table = torch.full((vocab.padded_size,), GROUPS.index("special"), dtype=torch.int64)
    for r in vocab.ranges:
        table[r.start:r.stop] = GROUPS.index(Modality(r.modality).value)
    return table


@dataclass
class StepLoss:
    """What one forward pass gives: the loss to backpropagate and detached statistics."""

    loss: torch.Tensor  # () float32, scaled by `normalizer`
    stats: torch.Tensor  # (len(GROUPS) + 1, 3) float64 sums (see STAT_COLUMNS)


def objective(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
              groups: torch.Tensor, *, z_loss: float = 0.0,
              normalizer: torch.Tensor | float | None = None) -> StepLoss:
    """Weighted next-token loss and per-group statistics.

    logits: (B, T, V); targets: (B, T) with IGNORE where there is no target; weights: (B, T)
    float (0 where IGNORE); groups: (V,) from `group_table`. normalizer: the weight sum to
    divide by (default: this batch's).
    """
    flat = logits.flatten(0, 1)  # (N, V), in the logits' dtype: the loss is float32 anyway
    target, w = targets.flatten(), weights.flatten().float()
    valid = target != IGNORE
    safe = target.clamp(min=0)
    ce, lse = cross_entropy_lse(flat, safe)
    ce = ce * valid  # (N,)
    per_token = ce
    if z_loss:
        per_token = ce + z_loss * lse.square() * valid
    weighted = (per_token * w).sum()
    denom = w.sum() if normalizer is None else normalizer
    loss = weighted / torch.as_tensor(denom, dtype=torch.float32).clamp(min=1e-8)
    with torch.no_grad():
        stats = group_stats(flat, ce, safe, valid & (w > 0), groups)  # the trained targets
        stats[-1, 0], stats[-1, 1] = weighted.double(), w.sum().double()
    return StepLoss(loss, stats)


def group_stats(flat: torch.Tensor, ce: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                groups: torch.Tensor) -> torch.Tensor:
    """(len(GROUPS) + 1, 3) float64: per group, the sums of ce, correct argmax and targets
    (over the positions where `valid`)."""
    g = torch.where(valid, groups.to(target.device)[target], len(GROUPS))  # (N,)
    correct = (flat.argmax(dim=-1) == target) & valid
    out = torch.zeros(len(GROUPS) + 1, 3, dtype=torch.float64, device=flat.device)
    out[:, 0].index_add_(0, g, ce.detach().double())
    out[:, 1].index_add_(0, g, correct.double())
    out[:, 2].index_add_(0, g, valid.double())
    out[-1] = 0  # invalid positions land here; the caller fills the totals
    return out


def summarize(stats: torch.Tensor) -> dict[str, float]:
    """{"loss", "loss_<group>", "acc_<group>", "tokens_<group>"} from summed `stats` (a group
    without targets is left out)."""
    s = stats.double().cpu()
    out = {"loss": float(s[-1, 0] / s[-1, 1]) if s[-1, 1] > 0 else float("nan")}
    for i, name in enumerate(GROUPS):
        ce, correct, count = s[i].tolist()
        if count:
            out[f"loss_{name}"] = ce / count
            out[f"acc_{name}"] = correct / count
            out[f"tokens_{name}"] = count
    return out
