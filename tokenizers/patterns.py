"""RVQ serialization patterns: how (K, T) audio codes become one flat run of vocabulary ids.

A pattern is an order over the K*T (level, frame) cells of the code grid:

    FlattenPattern  frame-major: all levels of frame 0, then all levels of frame 1, ...
    DelayPattern    MusicGen's delay: step s holds level k of frame s - k, so level k lags
                    level 0 by k frames (cells outside the grid are skipped, not padded)

Both share one interface:

    build(codes, vocab)   (K, T) local codes -> (T*K,) global ids (level k in range "audio_k")
    revert(ids, vocab)    (T*K,) global ids  -> (K, T) local codes
    levels(n)             (n,) RVQ level expected at each of the first n ids of a segment
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from omnitok import OmnitokError
from omnitok.tokenizers.vocab import Vocab


class PatternError(OmnitokError, ValueError):
    """Codes or ids that do not fit the pattern (wrong shape, level or codebook range)."""


def _int_tensor(x: torch.Tensor, what: str, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise PatternError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise PatternError(f"{what} must be an integer tensor, got {x.dtype}")
    if x.ndim != ndim:
        raise PatternError(f"{what} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x.long()


@dataclass(frozen=True)
class RVQPattern:
    """Base class: subclasses define `order(t)`, the (level, frame) of every step."""

    n_q: int
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.n_q, int) or self.n_q < 1:
            raise PatternError(f"n_q must be a positive int, got {self.n_q!r}")

    def order(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, frames), each (t*K,) int64: the cell emitted at every step for t frames."""
        raise NotImplementedError

    def levels(self, n: int) -> torch.Tensor:
        """(n,) level of each of the first n ids of a segment (of ceil(n / K) frames)."""
        return self.order(-(-n // self.n_q))[0][:n]

    def level_at(self, step: int | torch.Tensor) -> int | torch.Tensor:
        """Level of the `step`-th id (elementwise for a tensor), for a segment ending there."""
        if isinstance(step, torch.Tensor):
            return self.levels(int(step.max()) + 1)[step] if step.numel() else step.long()
        if step < 0:
            raise PatternError(f"step must be >= 0, got {step}")
        return int(self.levels(step + 1)[step])

    def _starts(self, vocab: Vocab) -> tuple[int, torch.Tensor]:
        """(codebook size, (K,) start id of each level's range) for `vocab`."""
        if vocab.audio is None:
            raise PatternError("the vocabulary has no audio ranges")
        if vocab.audio.n_q != self.n_q:
            raise PatternError(f"the pattern has {self.n_q} levels but the vocabulary's "
                               f"audio has {vocab.audio.n_q} levels")
        starts = torch.tensor([r.start for r in vocab.audio_ranges], dtype=torch.long)
        return vocab.audio.codebook_size, starts

    def build(self, codes: torch.Tensor, vocab: Vocab) -> torch.Tensor:
        """(K, T) local codes in [0, codebook_size) -> (T*K,) int64 global ids."""
        codebook_size, starts = self._starts(vocab)
        codes = _int_tensor(codes, "codes", 2)
        if codes.shape[0] != self.n_q:
            raise PatternError(f"expected codes of shape (K={self.n_q}, T), "
                               f"got {tuple(codes.shape)}")
        levels, frames = self.order(codes.shape[1])
        flat = codes[levels, frames]  # (T*K,) in pattern order
        bad = ((flat < 0) | (flat >= codebook_size)).nonzero()
        if len(bad):
            step = int(bad[0])
            raise PatternError(f"code {int(flat[step])} at level {int(levels[step])}, frame "
                               f"{int(frames[step])} (step {step}) is outside "
                               f"[0, {codebook_size})")
        return flat + starts.to(flat.device)[levels]

    def revert(self, ids: torch.Tensor, vocab: Vocab) -> torch.Tensor:
        """(T*K,) global ids -> (K, T) int64 local codes; every id must be of its step's level."""
        codebook_size, starts = self._starts(vocab)
        ids = _int_tensor(ids, "ids", 1)
        n, k = len(ids), self.n_q
        levels, frames = self.order(-(-n // k))
        levels, frames = levels[:n], frames[:n]
        local = ids - starts.to(ids.device)[levels]
        bad = ((local < 0) | (local >= codebook_size)).nonzero()
        if len(bad):
            step = int(bad[0])
            raise PatternError(f"id {int(ids[step])} at position {step} is not an "
                               f"audio_{int(levels[step])} id (frame {int(frames[step])})")
        if n % k:
            raise PatternError(f"{n} ids are not whole frames of {k} levels "
                               f"(the last frame stops at position {n - 1})")
        codes = torch.empty(k, n // k, dtype=torch.long, device=ids.device)
        codes[levels, frames] = local
        return codes


@dataclass(frozen=True)
class FlattenPattern(RVQPattern):
    """Frame-major flatten: codes (K, T) -> ids ordered t0k0, t0k1, ..., t0k{K-1}, t1k0, ..."""

    name: ClassVar[str] = "flatten"

    def order(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = torch.arange(t * self.n_q)
        return step % self.n_q, step // self.n_q


@dataclass(frozen=True)
class DelayPattern(RVQPattern):
    """Delay: step s holds levels k = 0..K-1 of frames s - k (cells outside the grid skipped).

    For T frames the order is a permutation of the K*T cells; the first K-1 steps hold only
    the lower levels and the last K-1 only the upper ones, so level k of frame t comes after
    level 0 of frame t + k (coarse levels run ahead of fine ones).
    """

    name: ClassVar[str] = "delay"

    def order(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.n_q
        steps = torch.arange(t + k - 1).repeat_interleave(k)  # (S*K,)
        levels = torch.arange(k).repeat(t + k - 1)
        frames = steps - levels
        keep = (frames >= 0) & (frames < t)
        return levels[keep], frames[keep]


PATTERNS: dict[str, type[RVQPattern]] = {"flatten": FlattenPattern, "delay": DelayPattern}


def make_pattern(name: str, n_q: int) -> RVQPattern:
    """The pattern called `name` ("flatten" or "delay") for `n_q` levels."""
    if name not in PATTERNS:
        raise PatternError(f"unknown RVQ pattern {name!r}; choose from {', '.join(PATTERNS)}")
    return PATTERNS[name](n_q)
