"""Packing documents into fixed-length rows with per-token document ids.

An epoch's plan is a pure function of (lengths, spans, seq_len, seed, epoch, dropout): the
documents are shuffled, edited by dropout (train/transforms.py), documents longer than a row
are split (below), and the pieces are packed by best fit over a window of the next `window`
pieces (`best_fit`). No piece is cut to fill a row: attention inside a row never crosses
documents (per-token doc ids) and no image is ever split.

Splitting a document longer than a row: at the last segment boundary that fits; if none fits,
inside a text segment (any token) or an audio segment (between whole frames); never inside an
image. A document with an image longer than a row is skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from omnitok import OmnitokError
from omnitok.model.loss import IGNORE
from omnitok.train.mix import ShardMix
from omnitok.train.shards import AUDIO, IMAGE, TEXT, TokenDocument, TokenShards
from omnitok.train.transforms import (
    Dropout,
    Edits,
    LossWeights,
    apply_edit,
    condition_mask,
    decide,
    edit_spans,
    edited_lengths,
    token_weights,
    weight_table,
)

NO_DROPOUT, UNIT_WEIGHTS = Dropout(), LossWeights()


class PackingError(OmnitokError, ValueError):
    """Packing settings that cannot work (a row length < 2, a window < 1, ...)."""


@dataclass
class PackPlan:
    """Rows of one epoch: row r holds pieces[row_starts[r]:row_starts[r + 1]], each a
    (document, start, stop) slice of the edited document, in row order."""

    seq_len: int
    pieces: np.ndarray  # (P, 3) int64
    row_starts: np.ndarray  # (R + 1,) int64
    edits: Edits
    skipped: Counter = field(default_factory=Counter)  # reason -> documents
    split: int = 0  # documents cut into several pieces

    @property
    def rows(self) -> int:
        return len(self.row_starts) - 1

    @property
    def tokens(self) -> int:
        return int((self.pieces[:, 2] - self.pieces[:, 1]).sum())

    @property
    def efficiency(self) -> float:
        """Share of row positions holding a token (not padding)."""
        return self.tokens / max(self.rows * self.seq_len, 1)

    def row(self, r: int) -> np.ndarray:
        return self.pieces[self.row_starts[r]:self.row_starts[r + 1]]

    def summary(self) -> str:
        skipped = "".join(f", {n} skipped ({why})" for why, n in sorted(self.skipped.items()))
        return (f"{self.tokens:,} tokens in {self.rows:,} rows of {self.seq_len}: "
                f"{100 * self.efficiency:.2f}% non-padding, {self.split} documents split"
                f"{skipped}")


def plan_epoch(lengths: np.ndarray, spans: np.ndarray, offsets: np.ndarray, seq_len: int, *,
               seed: int = 0, epoch: int = 0, window: int = 256,
               dropout: Dropout = NO_DROPOUT, n_q: int = 1) -> PackPlan:
    """The packing plan of one epoch (see the module docstring).

    lengths: (D,) ids per document; spans (S, 3) and offsets (D + 1,) as
    `TokenShards.span_table()`; n_q: ids per audio frame (the vocabulary's RVQ levels).
    """
    if seq_len < 2 or window < 1 or n_q < 1:
        raise PackingError(f"need seq_len >= 2, window >= 1 and n_q >= 1, got {seq_len}, "
                           f"{window}, {n_q}")
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    edits = decide(spans, offsets, dropout, seed, epoch)
    edited = edited_lengths(lengths, spans, offsets, edits)
    pieces, skipped, split = [], Counter(), 0
    for doc in order.tolist():
        n = int(edited[doc])
        if n <= seq_len:
            pieces.append((doc, 0, n))
            continue
        doc_spans = edit_spans(spans[offsets[doc]:offsets[doc + 1]], *edits.of(offsets, doc))
        cuts = split_document(doc_spans, n, seq_len, n_q)
        if isinstance(cuts, str):
            skipped[cuts] += 1
            continue
        pieces += [(doc, a, b) for a, b in cuts]
        split += 1
    table = np.array(pieces, dtype=np.int64).reshape(-1, 3)
    follows = np.zeros(len(table), dtype=bool)
    follows[1:] = table[1:, 0] == table[:-1, 0]  # a document's pieces are adjacent
    rows = best_fit(table[:, 2] - table[:, 1], seq_len, window, follows)
    order_in_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    row_starts = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return PackPlan(seq_len, table[order_in_rows], row_starts, edits, skipped, split)


def best_fit(lengths: np.ndarray, seq_len: int, window: int,
             follows: np.ndarray | None = None) -> list[np.ndarray]:
    """Piece indices of each row, packed over a sliding window of the next `window` pieces:
    a row starts with the oldest waiting piece (so none waits more than `window` rows), then
    takes the waiting pieces that fill the rest of the row best (`_fill_row`).

    follows: (P,) bool, True where a piece continues the previous piece's document; such a
    piece waits until that one is placed, so a split document's pieces stay in order.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    follows = np.zeros(len(sizes), bool) if follows is None else follows
    placed = np.zeros(len(sizes), dtype=bool)
    rows, pending, nxt = [], np.zeros(0, dtype=np.int64), 0
    while nxt < len(sizes) or len(pending):
        take = min(window - len(pending), len(sizes) - nxt)
        pending = np.concatenate([pending, np.arange(nxt, nxt + take)])  # ascending
        nxt += take
        row = _fill_row(pending, sizes[pending], seq_len, follows[pending], placed)
        placed[row] = True
        rows.append(row)
        pending = pending[~placed[pending]]
    return rows


def _fill_row(pending: np.ndarray, sizes: np.ndarray, seq_len: int, follows: np.ndarray,
              placed: np.ndarray) -> np.ndarray:
    """Pieces for one row out of `pending` (ascending piece indices): the oldest, then the
    subset of the other ready ones that fills the rest of the row best (exact subset sum over
    a bitset; among equal fills the older pieces win)."""
    free = seq_len - int(sizes[0])
    ready = ~follows | placed[np.maximum(pending - 1, 0)]
    ready[0] = False
    cand = np.flatnonzero(ready & (sizes <= free))
    lengths = sizes[cand].tolist()
    reach, history, mask = 1, [], (1 << (free + 1)) - 1  # bit t: t tokens reachable
    for n in lengths:
        history.append(reach)
        reach = (reach | (reach << n)) & mask
    t, taken = reach.bit_length() - 1, []
    for j in range(len(cand) - 1, -1, -1):
        if not (history[j] >> t) & 1:  # t needs piece j
            taken.append(cand[j])
            t -= lengths[j]
    return pending[[0, *taken[::-1]]]


def cut_points(spans: np.ndarray, length: int, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    """(preferred, allowed) sorted positions where a document of `length` ids may be cut.

    Preferred: segment boundaries (<bos> stays with the first segment, <eos> with the last).
    Allowed: those, every boundary, any position inside text, and between audio frames.
    """
    starts, stops = spans[:, 1].astype(np.int64), spans[:, 2].astype(np.int64)
    preferred = np.unique(np.concatenate([[0, length], starts[1:]]))
    inner = [np.arange(a + 1, b) for k, a, b in zip(spans[:, 0], starts, stops) if k == TEXT]
    inner += [np.arange(a + 1, b, n_q) for k, a, b in zip(spans[:, 0], starts, stops)
              if k == AUDIO]  # after <boa>, then every frame, up to before <eoa>
    allowed = np.unique(np.concatenate([preferred, starts, stops, *inner]))
    return preferred, allowed


def split_document(spans: np.ndarray, length: int, seq_len: int,
                   n_q: int) -> list[tuple[int, int]] | str:
    """(start, stop) pieces of at most `seq_len` ids covering [0, length), or why not."""
    preferred, allowed = cut_points(spans, length, n_q)
    pieces, p = [], 0
    while p < length:
        limit = min(p + seq_len, length)
        cut = _last_between(preferred, p, limit)
        cut = cut if cut is not None else _last_between(allowed, p, limit)
        if cut is None:
            image = (spans[:, 0] == IMAGE) & (spans[:, 2] - spans[:, 1] > seq_len)
            return "image longer than a row" if image.any() else "segment longer than a row"
        pieces.append((p, cut))
        p = cut
    return pieces


def _last_between(points: np.ndarray, low: int, high: int) -> int | None:
    """The largest point in (low, high], or None."""
    i = int(np.searchsorted(points, high, side="right")) - 1
    return int(points[i]) if i >= 0 and points[i] > low else None


# ---- the dataset ---------------------------------------------------------------------------
class PackedDataset(Dataset):
    """Packed rows of a shard folder for one rank; `dataset[(epoch, row)]` is a dict of

        ids      (T,) int64   input ids (<pad> after the last piece)
        targets  (T,) int64   next id in the same document, IGNORE where there is none
        doc_ids  (T,) int64   0, 1, ... per piece; the padding is one more document
        weights  (T,) float32 loss weight of each target (0 where IGNORE)
        epoch, row            the key (for `resume_state`)

    Rank r of w gets global rows r, r + w, r + 2w, ...; every rank has
    ceil(rows / w) rows per epoch, the missing last ones being all padding (weights 0), so
    ranks stay in step and together see every row exactly once. Use `ResumableSampler`.
    """

    def __init__(self, source: TokenShards | ShardMix, seq_len: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, window: int = 256,
                 dropout: Dropout = NO_DROPOUT, weights: LossWeights = UNIT_WEIGHTS) -> None:
        if not 0 <= rank < world_size:
            raise PackingError(f"rank {rank} outside [0, {world_size})")
        self.source, self.seq_len, self.seed, self.window = source, seq_len, seed, window
        self.rank, self.world_size, self.dropout = rank, world_size, dropout
        vocab = source.vocab
        self.pad = vocab.special("<pad>")
        self.uncond = vocab.special("<uncond>") if dropout.condition else -1
        self.n_q = vocab.audio.n_q if vocab.audio is not None else 1
        self.table = weight_table(vocab, weights)
        self.condition_weight = weights.condition
        self.spans, self.offsets = source.span_table()
        self._plans: dict[int, PackPlan] = {}

    def plan(self, epoch: int) -> PackPlan:
        """The global plan of `epoch` (the same on every rank; the last two are cached)."""
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan_epoch(
                self.source.lengths, self.spans, self.offsets, self.seq_len, seed=self.seed,
                epoch=epoch, window=self.window, dropout=self.dropout, n_q=self.n_q)
        return self._plans[epoch]

    def rows(self, epoch: int) -> int:
        """Rows of this rank in `epoch`."""
        return -(-self.plan(epoch).rows // self.world_size)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, row = key
        plan, g = self.plan(epoch), row * self.world_size + self.rank
        if not 0 <= row < self.rows(epoch):
            raise IndexError(f"row {row} outside [0, {self.rows(epoch)}) of epoch {epoch}")
        t = self.seq_len
        ids = np.full(t, self.pad, dtype=np.int64)
        targets = np.full(t, IGNORE, dtype=np.int64)
        doc_ids = np.zeros(t, dtype=np.int64)
        conditioning = np.zeros(t, dtype=bool)  # the target lies in a conditioning segment
        pos, j = 0, 0
        for j, (doc, a, b) in enumerate(plan.row(g) if g < plan.rows else ()):
            document = self._document(plan, int(doc))
            piece = document.ids[a:b]
            ids[pos:pos + len(piece)] = piece
            targets[pos:pos + len(piece) - 1] = piece[1:]
            doc_ids[pos:pos + len(piece)] = j
            if self.condition_weight != 1:
                conditioning[pos:pos + len(piece) - 1] = condition_mask(document)[a + 1:b]
            pos += len(piece)
        doc_ids[pos:] = j + 1 if pos else 0
        targets_t = torch.from_numpy(targets)
        weights = token_weights(targets_t, self.table)
        if conditioning.any():
            weights[torch.from_numpy(conditioning)] *= self.condition_weight
        return {"ids": torch.from_numpy(ids), "targets": targets_t,
                "doc_ids": torch.from_numpy(doc_ids), "weights": weights,
                "epoch": epoch, "row": row}

    def _document(self, plan: PackPlan, doc: int) -> TokenDocument:
        dropped, uncond = plan.edits.of(self.offsets, doc)
        return apply_edit(self.source[doc], dropped, uncond, self.uncond)


class ResumableSampler(Sampler):
    """Keys (epoch, row) of a PackedDataset from a position on, epoch after epoch.

    Pass it as `sampler=` to a DataLoader; save `resume_state(batch)` of the last batch the
    training step consumed, and `ResumableSampler(dataset, **state)` continues right after it.
    """

    def __init__(self, dataset: PackedDataset, epoch: int = 0, row: int = 0,
                 epochs: int | None = None) -> None:
        self.dataset, self.epoch, self.row, self.epochs = dataset, epoch, row, epochs

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, row = self.epoch, self.row
        while self.epochs is None or epoch < self.epochs:
            yield from ((epoch, r) for r in range(row, self.dataset.rows(epoch)))
            epoch, row = epoch + 1, 0

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless ResumableSampler has no length")
        return sum(self.dataset.rows(e) for e in range(self.epoch, self.epochs)) - self.row


def resume_state(batch: dict) -> dict[str, int]:
    """{"epoch", "row"} right after the last row of a collated batch."""
    epoch, row = batch["epoch"], batch["row"]
    return {"epoch": int(epoch[-1]), "row": int(row[-1]) + 1}
