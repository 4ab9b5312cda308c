"""RVQ serialization patterns: how (K, T) audio codes become one flat run of vocabulary ids.

A pattern decides the order in which the K levels of T frames are emitted and which level the
model must produce at each step. `FlattenPattern` is frame-major (all levels of frame 0, then
all levels of frame 1, ...); a delay pattern can follow behind the same interface:

    build(codes, vocab)  (K, T) local codes  -> (n,) global ids
    revert(ids, vocab)   (n,) global ids     -> (K, T) local codes
    level_at(step)       the RVQ level the `step`-th id of an audio segment must belong to
"""

from __future__ import annotations

from dataclasses import dataclass

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
class FlattenPattern:
    """Frame-major flatten: codes (K, T) -> ids (T*K,) ordered t0k0, t0k1, ..., t0k{K-1}, t1k0, ...

    Each level's codes are offset into that level's vocab range ("audio_k").
    """

    n_q: int

    def __post_init__(self) -> None:
        if not isinstance(self.n_q, int) or self.n_q < 1:
            raise PatternError(f"n_q must be a positive int, got {self.n_q!r}")

    def _levels(self, vocab: Vocab) -> tuple[int, torch.Tensor]:
        """(codebook size, (K,) start id of each level's range) for `vocab`."""
        if vocab.audio is None:
            raise PatternError("the vocabulary has no audio ranges")
        if vocab.audio.n_q != self.n_q:
            raise PatternError(f"the pattern has {self.n_q} levels but the vocabulary's "
                               f"audio has {vocab.audio.n_q} levels")
        starts = torch.tensor([r.start for r in vocab.audio_ranges], dtype=torch.long)
        return vocab.audio.codebook_size, starts

    def level_at(self, step: int | torch.Tensor) -> int | torch.Tensor:
        """RVQ level of the `step`-th id inside an audio segment (elementwise for a tensor)."""
        if isinstance(step, torch.Tensor):
            return step % self.n_q
        if step < 0:
            raise PatternError(f"step must be >= 0, got {step}")
        return step % self.n_q

    def build(self, codes: torch.Tensor, vocab: Vocab) -> torch.Tensor:
        """(K, T) local codes in [0, codebook_size) -> (T*K,) int64 global ids."""
        codebook_size, starts = self._levels(vocab)
        codes = _int_tensor(codes, "codes", 2)
        if codes.shape[0] != self.n_q:
            raise PatternError(f"expected codes of shape (K={self.n_q}, T), "
                               f"got {tuple(codes.shape)}")
        flat = codes.T.reshape(-1)  # (T*K,) frame-major
        bad = ((flat < 0) | (flat >= codebook_size)).nonzero()
        if len(bad):
            step = int(bad[0])
            t, k = divmod(step, self.n_q)
            raise PatternError(f"code {int(flat[step])} at level {k}, frame {t} (step {step}) "
                               f"is outside [0, {codebook_size})")
        return flat + starts.to(flat.device).repeat(codes.shape[1])

    def revert(self, ids: torch.Tensor, vocab: Vocab) -> torch.Tensor:
        """(T*K,) global ids -> (K, T) int64 local codes; every id must be of its step's level."""
        codebook_size, starts = self._levels(vocab)
        ids = _int_tensor(ids, "ids", 1)
        steps = torch.arange(len(ids), device=ids.device)
        local = ids - starts.to(ids.device)[self.level_at(steps)]
        bad = ((local < 0) | (local >= codebook_size)).nonzero()
        if len(bad):
            step = int(bad[0])
            raise PatternError(f"id {int(ids[step])} at position {step} is not an "
                               f"audio_{self.level_at(step)} id (frame {step // self.n_q})")
        if len(ids) % self.n_q:
            raise PatternError(f"{len(ids)} ids are not whole frames of {self.n_q} levels "
                               f"(the last frame stops at position {len(ids) - 1})")
        return local.view(-1, self.n_q).T.contiguous()  # (T, K) -> (K, T)
