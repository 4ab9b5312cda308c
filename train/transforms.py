"""Data-side parts of the objective: condition dropout, modality dropout, loss weights.

Dropout decisions are drawn for a whole epoch at once from (seed, epoch), so the packer (which
needs edited lengths) and the loader (which needs edited ids) agree without sharing state.

- condition dropout (classifier-free guidance): with probability `condition`, every segment
  before the last (the target) is replaced by one `<uncond>` token;
- modality dropout: otherwise, each non-target segment of a kind in `kinds` is dropped with
  probability `modality`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnitok import OmnitokError
from omnitok.model.loss import IGNORE
from omnitok.tokenizers.vocab import Modality, Vocab
from omnitok.train.shards import SPAN_KINDS, SPECIAL, TEXT, TokenDocument

NO_LOSS_TARGETS = ("<pad>", "<bos>", "<uncond>")  # given, never predicted


class TransformError(OmnitokError, ValueError):
    """A dropout probability or loss weight out of range."""


@dataclass(frozen=True)
class Dropout:
    """Probabilities of condition dropout and modality dropout (see the module docstring)."""

    condition: float = 0.0
    modality: float = 0.0
    kinds: tuple[str, ...] = ("text", "image", "audio")  # what modality dropout may drop

    def __post_init__(self) -> None:
        if not (0 <= self.condition <= 1 and 0 <= self.modality <= 1):
            raise TransformError(f"dropout probabilities must lie in [0, 1], got "
                                 f"condition={self.condition}, modality={self.modality}")
        unknown = set(self.kinds) - set(SPAN_KINDS)
        if unknown:
            raise TransformError(f"unknown segment kinds {sorted(unknown)} for dropout")


@dataclass
class Edits:
    """One epoch's dropout decisions: `dropped` (S,) per span, `uncond` (D,) per document."""

    dropped: np.ndarray
    uncond: np.ndarray

    def of(self, offsets: np.ndarray, i: int) -> tuple[np.ndarray, bool]:
        """(dropped mask of document i's spans, whether it gets <uncond>)."""
        return self.dropped[offsets[i]:offsets[i + 1]], bool(self.uncond[i])


def decide(spans: np.ndarray, offsets: np.ndarray, dropout: Dropout, seed: int,
           epoch: int) -> Edits:
    """Dropout decisions for every document: spans (S, 3), offsets (D + 1,) as
    `TokenShards.span_table()`; a pure function of its arguments."""
    n_docs, n_spans = len(offsets) - 1, len(spans)
    counts = np.diff(offsets)
    doc_of = np.repeat(np.arange(n_docs), counts)  # (S,) document of each span
    target = np.zeros(n_spans, dtype=bool)
    target[offsets[1:][counts > 0] - 1] = True  # the last span of each document
    rng = np.random.default_rng([seed, epoch, 0xD0])
    uncond = (rng.random(n_docs) < dropout.condition) & (counts >= 2)
    droppable = np.isin(spans[:, 0], [SPAN_KINDS.index(k) for k in dropout.kinds])
    dropped = ~target & droppable & (rng.random(n_spans) < dropout.modality)
    dropped = np.where(uncond[doc_of], ~target, dropped & ~uncond[doc_of])
    return Edits(dropped, uncond)


def edited_lengths(lengths: np.ndarray, spans: np.ndarray, offsets: np.ndarray,
                   edits: Edits) -> np.ndarray:
    """(D,) document lengths after `edits`."""
    doc_of = np.repeat(np.arange(len(lengths)), np.diff(offsets))
    removed = np.bincount(doc_of, weights=(spans[:, 2] - spans[:, 1]) * edits.dropped,
                          minlength=len(lengths)).astype(np.int64)
    return lengths - removed + edits.uncond


def edit_spans(spans: np.ndarray, dropped: np.ndarray, uncond: bool) -> np.ndarray:
    """Spans (S', 3) of a document after dropping spans (and inserting <uncond>)."""
    if not dropped.any():
        return spans
    lengths = spans[:, 2] - spans[:, 1]
    shift = np.cumsum(np.where(dropped, lengths, 0)) - np.where(dropped, lengths, 0)
    first = int(np.argmax(dropped))
    out = spans.copy()
    out[:, 1:] -= shift[:, None]
    out[first + 1:, 1:] += int(uncond)  # after the inserted token
    kept = out[~dropped]
    if uncond:
        start = int(spans[first, 1])
        marker = np.array([[SPECIAL, start, start + 1]], dtype=spans.dtype)
        before = kept[:, 1] < start
        kept = np.concatenate([kept[before], marker, kept[~before]])
    return _merge_text(kept)


def _merge_text(spans: np.ndarray) -> np.ndarray:
    """Adjacent text spans as one (as the codec parses them)."""
    joins = (spans[1:, 0] == TEXT) & (spans[:-1, 0] == TEXT)
    if not joins.any():
        return spans
    first = np.concatenate([[True], ~joins])  # (S,) True where a merged span starts
    out = spans[first].copy()
    out[:, 2] = np.maximum.reduceat(spans[:, 2], np.flatnonzero(first))
    return out


def apply_edit(doc: TokenDocument, dropped: np.ndarray, uncond: bool,
               uncond_id: int) -> TokenDocument:
    """`doc` with its dropped spans removed and <uncond> where the condition was."""
    if not dropped.any():
        return doc
    keep = np.ones(len(doc.ids), dtype=bool)
    for _, start, stop in doc.spans[dropped]:
        keep[start:stop] = False
    ids = doc.ids[keep]
    if uncond:
        at = int(doc.spans[dropped][0, 1])
        ids = np.concatenate([ids[:at], [uncond_id], ids[at:]])
    return TokenDocument(ids, edit_spans(doc.spans, dropped, uncond), doc.line)


# ---- loss weights ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """Loss weight of a target token by its modality; audio level k also gets audio_levels[k];
    a target inside a conditioning segment (any segment before the last) also gets `condition`
    (0: learn only the target segment given its conditions; 1: every token alike)."""

    text: float = 1.0
    image: float = 1.0
    audio: float = 1.0
    special: float = 1.0  # <eos>, image/audio markers and grid tokens
    audio_levels: tuple[float, ...] = ()  # one per RVQ level; empty: all 1
    condition: float = 1.0

    def __post_init__(self) -> None:
        values = (self.text, self.image, self.audio, self.special, *self.audio_levels,
                  self.condition)
        if any(not v >= 0 for v in values):
            raise TransformError(f"loss weights must be >= 0, got {self}")


def weight_table(vocab: Vocab, weights: LossWeights) -> torch.Tensor:
    """(vocab.size,) float32: the loss weight of each id as a target."""
    table = torch.zeros(vocab.size, dtype=torch.float32)
    levels = weights.audio_levels
    if levels and (vocab.audio is None or len(levels) != vocab.audio.n_q):
        n_q = vocab.audio.n_q if vocab.audio else 0
        raise TransformError(f"{len(levels)} audio level weights for {n_q} RVQ levels")
    for r in vocab.ranges:
        w = getattr(weights, r.modality.value)
        if r.modality == Modality.AUDIO and levels:
            w *= levels[r.level]
        table[r.start:r.stop] = w
    for token in NO_LOSS_TARGETS:
        if token in vocab.specials:
            table[vocab.special(token)] = 0.0
    return table


def condition_mask(doc: TokenDocument) -> np.ndarray:
    """(L,) bool: the positions of `doc` inside its conditioning segments (all but the last)."""
    mask = np.zeros(len(doc.ids), dtype=bool)
    for _, start, stop in doc.spans[:-1]:
        mask[start:stop] = True
    return mask


def token_weights(targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Loss weights, same shape as `targets` (any shape); 0 where the target is IGNORE."""
    valid = targets != IGNORE
    return torch.where(valid, table[targets.clamp(min=0)], 0.0)
