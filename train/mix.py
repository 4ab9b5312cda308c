"""Training on several shard folders at once: `omnitok train --data A --mix B:2 C:0.5`.

A mix is one list of documents: the --data folder's documents once each, then each --mix
folder's documents REPEATS times each, where a fraction takes a seeded share of them (2.5:
every document twice, and half of them, always the same half for a seed, a third time).
Packing then shuffles and edits this list like a single folder's (train/packing.py), so the
copies of a document land in different rows and draw their own dropout every epoch.

All folders must share one vocabulary (be made with the same tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from omnitok import OmnitokError
from omnitok.train.shards import TokenDocument, TokenShards


class MixError(OmnitokError, ValueError):
    """A --mix entry that cannot be read, or folders that do not share a vocabulary."""


@dataclass(frozen=True)
class MixEntry:
    folder: str
    repeats: float


def parse_mix(text: str) -> MixEntry:
    """"FOLDER:REPEATS" -> MixEntry (REPEATS a number > 0)."""
    folder, sep, tail = text.rpartition(":")
    try:
        repeats = float(tail) if sep else math.nan
    except ValueError:
        repeats = math.nan
    if not folder or not (math.isfinite(repeats) and repeats > 0):
        raise MixError(f"--mix {text!r}: expected FOLDER:REPEATS with REPEATS > 0 (e.g. "
                       f"shards_img:2)")
    return MixEntry(folder, repeats)


def copies(n_docs: int, repeats: float, seed: int, which: int) -> np.ndarray:
    """Indices of one folder's documents in the mix: each floor(repeats) times, then a seeded
    round(frac(repeats) * n_docs) of them once more (ascending)."""
    whole = int(repeats)
    extra = np.random.default_rng([seed, which]).permutation(n_docs)
    extra = np.sort(extra[:round((repeats - whole) * n_docs)])
    return np.concatenate([np.tile(np.arange(n_docs), whole), extra]).astype(np.int64)


class ShardMix:
    """Documents of several TokenShards, repeated as asked: `len()`, `mix[i]`, `lengths`,
    `span_table()` and `vocab`, as a single TokenShards offers them to packing."""

    def __init__(self, sources: list[TokenShards], repeats: list[float], seed: int = 0) -> None:
        if not sources or len(sources) != len(repeats):
            raise MixError("a mix needs one repeat count per shard folder")
        for other in sources[1:]:
            if other.vocab != sources[0].vocab:
                raise MixError(f"{other.folder}: made with another tokenizer (vocabulary) "
                               f"than {sources[0].folder}; a mix needs one vocabulary")
        self.sources, self.repeats, self.vocab = sources, list(repeats), sources[0].vocab
        docs = [copies(len(s), r, seed, k) for k, (s, r) in enumerate(zip(sources, repeats))]
        self.source_of = np.concatenate([np.full(len(d), k, np.int64)
                                         for k, d in enumerate(docs)])
        self.doc_of = np.concatenate(docs)
        self.lengths = np.concatenate([s.lengths[d] for s, d in zip(sources, docs)])

    def __len__(self) -> int:
        return len(self.doc_of)

    def __getitem__(self, i: int) -> TokenDocument:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} outside [0, {len(self)})")
        return self.sources[int(self.source_of[i])][int(self.doc_of[i])]

    def span_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All spans (S, 3) and per-document offsets (D + 1,), as TokenShards.span_table."""
        parts, counts = [], []
        for k, source in enumerate(self.sources):
            spans, offsets = source.span_table()
            docs = self.doc_of[self.source_of == k]
            n = offsets[docs + 1] - offsets[docs]
            first = np.repeat(offsets[docs], n)  # each row's document's first span
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            parts.append(spans[first + within])
            counts.append(n)
        n = np.concatenate(counts)
        return np.concatenate(parts), np.concatenate([[0], np.cumsum(n)]).astype(np.int64)

    def summary(self) -> str:
        """One line: documents per folder and their repeats."""
        return "mix: " + ", ".join(f"{s.folder} x{r:g} ({int((self.source_of == k).sum()):,} "
                                   f"documents)" for k, (s, r)
                                   in enumerate(zip(self.sources, self.repeats)))
