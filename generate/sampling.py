"""Turning next-token logits into ids: masking, repetition penalty, temperature, top-k, top-p.

Every row of a batch has its own settings (rows may be in different modalities at the same
step) and, optionally, its own random generator: a row's draws then do not depend on which
other rows share its batch. Draws use the Gumbel-max trick (argmax of log-probabilities plus
Gumbel noise), which samples exactly from the softmax of the kept logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from omnitok import OmnitokError


@dataclass
class SamplingParams:
    """Settings for one modality. temperature 0 is greedy; top_k 0 / top_p 1 switch them off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise OmnitokError(f"invalid sampling settings {self}: need temperature >= 0, "
                               "top_k >= 0, 0 < top_p <= 1")
        if self.repetition_penalty <= 0:
            raise OmnitokError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class ModalitySampling:
    """Sampling settings per modality; the row's current segment picks which apply.

    On the command line: `--text.temperature 0.7 --image.top-k 500 --audio.top-p 0.9 ...`.
    """

    cli_flatten: ClassVar[bool] = True  # flags are --text.x, not --sampling.text.x
    text: SamplingParams = field(default_factory=lambda: SamplingParams(0.7, 40, 0.95, 1.1))
    image: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 2000, 1.0, 1.0))
    audio: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 250, 1.0, 1.0))

    def greedy(self) -> ModalitySampling:
        """The same settings with temperature 0 everywhere."""
        return ModalitySampling(*(SamplingParams(0.0, p.top_k, p.top_p, p.repetition_penalty)
                                  for p in (self.text, self.image, self.audio)))

    def for_modality(self, name: str) -> SamplingParams:
        return getattr(self, name)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: torch.Tensor) -> torch.Tensor:
    """CTRL-style: divide positive logits of seen ids by the row's penalty, multiply negative."""
    p = penalty[:, None].to(logits.dtype)
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen & (penalty[:, None] != 1), penalized, logits)


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams], *,
                allowed: torch.Tensor | None = None, seen: torch.Tensor | None = None,
                generators: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One id per row. logits, allowed, seen: (B, V); params: B settings; returns (B,) int64.

    allowed: ids that may be drawn (never anything else); seen: ids that the repetition
    penalty applies to; generators: one per row (None: the global generator).
    """
    b, v = logits.shape
    logits = logits.float()
    if seen is not None and any(p.repetition_penalty != 1 for p in params):
        penalty = torch.tensor([p.repetition_penalty for p in params])
        logits = apply_repetition_penalty(logits, seen, penalty.to(logits.device))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    temps = torch.tensor([p.temperature for p in params], device=logits.device)
    greedy = logits.argmax(dim=-1)
    if bool((temps <= 0).all()):
        return greedy
    kept, order = _filtered_sorted(logits / temps.clamp_min(1e-5)[:, None], params)
    noise = torch.stack([_gumbel(v, g, logits.device)
                         for g in (generators or [None] * b)])
    drawn = order.gather(-1, (kept + noise).argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(temps <= 0, greedy, drawn)


def _filtered_sorted(logits: torch.Tensor, params: Sequence[SamplingParams]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits sorted in descending order with top-k / top-p cut ids at -inf; and the order."""
    b, v = logits.shape
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(v, device=logits.device)
    top_k = torch.tensor([p.top_k or v for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the ids ranked above each id
    drop = (rank >= top_k[:, None]) | (before >= top_p[:, None])
    drop[:, 0] = False
    return sorted_logits.masked_fill(drop, float("-inf")), order


def _gumbel(v: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    u = torch.rand(v, generator=generator, device=device).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))


def sample(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, allowed: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row with the same settings for every row. logits: (B, V) -> (B,).

    allowed: (V,) or (B, V) bool; ids outside it are never drawn. temperature 0 is greedy.
    """
    params = [SamplingParams(temperature, top_k or 0, top_p or 1.0)] * logits.shape[0]
    if allowed is not None:
        allowed = allowed.expand_as(logits)
    return sample_rows(logits, params, allowed=allowed, generators=[generator] * len(params))
