"""Pre-tokenized shards: documents as unified-vocabulary ids, with their segment spans.

A shard folder (`omnitok tokenize` writes one; see train/pretokenize.py):

    config.json           what the shards were made with (checked on every rerun)
    vocab.json            the unified vocabulary of the ids
    index.json            the finished shards in order, with totals (written last)
    shard-00000/          manifest lines [0, lines_per_shard), written as a whole (atomically)
        ids.npy           (N,) uint16 (uint32 if the vocabulary needs it): every document's
                          ids, <bos> .. <eos>, one after another
        docs.npy          (D, 5) int64 rows: token start, token stop (into ids.npy), span
                          start, span stop (into spans.npy), manifest line (1-based)
        spans.npy         (S, 3) int32 rows: kind (SPAN_KINDS), start, stop; positions relative
                          to the document's first id; markers belong to their segment
                          (<boi> grid grid codes <eoi>), <bos>/<eos> to no segment
        meta.json         counts, skipped documents and the digest of the manifest lines

Plain numpy files, memory-mapped for reading: random access to any document costs one slice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnitok import OmnitokError, atomic_dir, atomic_write_text, read_json_object
from omnitok.tokenizers.vocab import Vocab

FORMAT, VERSION = "omnitok-shards", 1
SPAN_KINDS = ("text", "image", "audio", "special")  # spans.npy column 0 indexes this
TEXT, IMAGE, AUDIO, SPECIAL = range(4)
DOC_COLUMNS = ("token_start", "token_stop", "span_start", "span_stop", "line")


class ShardError(OmnitokError):
    """A shard folder that is missing, incomplete, or does not match its index."""


@dataclass
class TokenDocument:
    """One document: ids (L,) and spans (S, 3) of (kind, start, stop), positions in ids."""

    ids: np.ndarray
    spans: np.ndarray
    line: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def ids_dtype(vocab: Vocab) -> np.dtype:
    """The smallest unsigned dtype that holds every id of `vocab`."""
    return np.dtype(np.uint16 if vocab.size <= 2**16 else np.uint32)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_shard(folder: Path, docs: list[TokenDocument], dtype: np.dtype, meta: dict) -> None:
    """Write `docs` as one shard folder, atomically (readers never see half a shard)."""
    with atomic_dir(folder) as tmp:
        lengths = np.array([len(d.ids) for d in docs], dtype=np.int64)
        n_spans = np.array([len(d.spans) for d in docs], dtype=np.int64)
        table = np.zeros((len(docs), len(DOC_COLUMNS)), dtype=np.int64)
        table[:, 1] = np.cumsum(lengths)
        table[:, 0] = table[:, 1] - lengths
        table[:, 3] = np.cumsum(n_spans)
        table[:, 2] = table[:, 3] - n_spans
        table[:, 4] = [d.line for d in docs]
        ids = np.concatenate([d.ids for d in docs]) if docs else np.zeros(0)
        spans = np.concatenate([d.spans for d in docs]) if docs else np.zeros((0, 3))
        np.save(tmp / "ids.npy", ids.astype(dtype, copy=False))
        np.save(tmp / "docs.npy", table)
        np.save(tmp / "spans.npy", spans.astype(np.int32, copy=False).reshape(-1, 3))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n",
                                       encoding="utf-8")


def write_shards(folder: str | os.PathLike, vocab: Vocab, docs: list[TokenDocument],
                 docs_per_shard: int = 2048) -> None:
    """Write already encoded documents as a finished shard folder (no manifest involved)."""
    folder, dtype = Path(folder), ids_dtype(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    vocab.save(folder / "vocab.json")
    shards = []
    for k, first in enumerate(range(0, len(docs), docs_per_shard)):
        part = docs[first:first + docs_per_shard]
        write_shard(folder / shard_name(k), part, dtype, {"shard": k, "documents": len(part)})
        shards.append({"name": shard_name(k), "documents": len(part),
                       "tokens": sum(len(d) for d in part)})
    index = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "shards": shards,
             "documents": len(docs)}
    atomic_write_text(folder / "index.json", json.dumps(index, indent=1) + "\n")


def read_meta(folder: Path) -> dict | None:
    """A finished shard's meta.json, or None if the shard is absent or unreadable."""
    try:
        return read_json_object(folder / "meta.json", ShardError)
    except ShardError:
        return None


class TokenShards:
    """Read-only view of a shard folder: `len()` documents, `shards[i]` -> TokenDocument.

    Document metadata (lengths, spans) lives in memory; ids are memory-mapped on first use
    (and never pickled, so DataLoader workers open their own maps).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index = read_json_object(self.folder / "index.json", ShardError,
                                 "no index.json: not a finished shard folder "
                                 "(run `omnitok tokenize` to finish it)")
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ShardError(f"{self.folder}: not an {FORMAT} v{VERSION} folder")
        self.vocab = Vocab.load(self.folder / "vocab.json")
        self.dtype = np.dtype(index["dtype"])
        self.names = [s["name"] for s in index["shards"]]
        self.index = index
        tables = [self._table(s) for s in index["shards"]]
        self._spans = [np.load(self.folder / n / "spans.npy") for n in self.names]
        self._tables = tables
        counts = np.array([len(t) for t in tables], dtype=np.int64)
        self._doc_starts = np.concatenate([[0], np.cumsum(counts)])
        table = np.concatenate(tables) if tables else np.zeros((0, 5), np.int64)
        self.lengths = table[:, 1] - table[:, 0]  # (D,) ids per document
        self.lines = table[:, 4]  # (D,) manifest line of each document
        self._ids: list[np.ndarray] | None = None

    def _table(self, shard: dict) -> np.ndarray:
        path = self.folder / shard["name"] / "docs.npy"
        if not path.is_file():
            raise ShardError(f"{path.parent}: missing shard listed in index.json")
        table = np.load(path)
        if table.ndim != 2 or table.shape != (shard["documents"], len(DOC_COLUMNS)):
            raise ShardError(f"{path}: {table.shape[0]} documents, index.json says "
                             f"{shard['documents']}")
        return table

    def __len__(self) -> int:
        return int(self._doc_starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Document `i` -> (shard number, row in that shard)."""
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} outside [0, {len(self)})")
        s = int(np.searchsorted(self._doc_starts, i, side="right")) - 1
        return s, i - int(self._doc_starts[s])

    def ids(self, i: int) -> np.ndarray:
        """(L,) ids of document `i` (a read-only view into the memory map)."""
        s, j = self.locate(i)
        start, stop = self._tables[s][j, :2]
        return self._maps()[s][start:stop]

    def spans(self, i: int) -> np.ndarray:
        """(S, 3) int32 rows (kind, start, stop) of document `i`."""
        s, j = self.locate(i)
        start, stop = self._tables[s][j, 2:4]
        return self._spans[s][start:stop]

    def span_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All spans (S, 3) and per-document offsets (D + 1,): document i has rows
        spans[offsets[i]:offsets[i + 1]]."""
        spans = np.concatenate(self._spans) if self._spans else np.zeros((0, 3), np.int32)
        counts = np.concatenate([t[:, 3] - t[:, 2] for t in self._tables]) \
            if self._tables else np.zeros(0, np.int64)
        return spans, np.concatenate([[0], np.cumsum(counts)])

    def __getitem__(self, i: int) -> TokenDocument:
        s, j = self.locate(i)
        return TokenDocument(np.asarray(self.ids(i), dtype=np.int64), self.spans(i),
                             int(self._tables[s][j, 4]))

    def _maps(self) -> list[np.ndarray]:
        if self._ids is None:
            self._ids = [np.load(self.folder / n / "ids.npy", mmap_mode="r")
                         for n in self.names]
            for name, ids, table in zip(self.names, self._ids, self._tables):
                if ids.dtype != self.dtype or (len(table) and len(ids) != table[-1, 1]):
                    raise ShardError(f"{self.folder / name}/ids.npy does not match docs.npy")
        return self._ids

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": None}
