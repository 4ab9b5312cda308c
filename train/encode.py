"""One manifest document -> its unified-vocabulary ids and segment spans (train/shards.py).

Uses the tokenizer folder's `TokenizerBundle` and its `DocumentCodec` (<bos> .. <eos> per
document), so shard ids are exactly `codec.encode(bundle.document(segments))`. Media codes
are cached per file (least recently used), so a file named by several adjacent documents is
decoded once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from omnitok import OmnitokError
from omnitok.tokenizers.audio_io import AudioTokenizerError
from omnitok.tokenizers.bundle import AUDIO, IMAGE, BundleError, TokenizerBundle
from omnitok.tokenizers.document import (
    AudioSegment,
    Document,
    DocumentCodec,
    DocumentError,
    ImageSegment,
    Segment,
    TextSegment,
)
from omnitok.tokenizers.image_io import ImageTokenizerError
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import Modality
from omnitok.train.manifest import ManifestDocument, ManifestSegment
from omnitok.train.shards import SPAN_KINDS, TokenDocument

_KIND = {Modality(k): i for i, k in enumerate(SPAN_KINDS)}
CACHE_FILES = 256


class BadDocument(OmnitokError):
    """A document that cannot be encoded, in strict mode (the message names the line)."""


class SkipDocument(OmnitokError):
    """A document that cannot be encoded; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        super().__init__(f"{where}: {reason}: {detail}")
        self.reason = reason


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (codes then do not depend on the thread count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class DocumentEncoder:
    """Encodes manifest documents with the tokenizers of one folder."""

    def __init__(self, folder: Path, *, strict: bool = False, name: str = "manifest") -> None:
        self.folder, self.strict, self.name = Path(folder), strict, name
        self.bundle = TokenizerBundle.load(folder)
        self.codec = self.bundle.codec()
        self.vocab = self.bundle.vocab
        self._cache: OrderedDict[Path, tuple[str, torch.Tensor | str]] = OrderedDict()
        self._modality = np.array([SPAN_KINDS.index(r.modality.value) for r in self.vocab.ranges])

    def fingerprint(self) -> str:
        """A digest of the vocabulary and the tokenizer files (not a checkpoint's weights)."""
        h = hashlib.sha256(json.dumps(self.vocab.to_dict(), sort_keys=True).encode())
        files = [self.folder / TextTokenizer.FILENAME]
        for sub in (IMAGE, AUDIO):
            files += sorted(p for p in (self.folder / sub).glob("*") if p.is_file())
        for path in files:
            if path.is_file():
                h.update(path.name.encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    def encode(self, doc: ManifestDocument) -> TokenDocument:
        """Ids (L,) and spans (S, 3); raises SkipDocument (in strict mode BadDocument)."""
        segments = [self._segment(doc, s) for s in doc.segments]
        try:
            return token_document(self.codec, Document(segments), doc.line)
        except DocumentError as e:
            raise self._skip(doc, "cannot serialize", str(e)) from None

    def _segment(self, doc: ManifestDocument, seg: ManifestSegment) -> Segment:
        kind, value = seg.kind, seg.value
        if kind == "text":
            if not value.strip():
                raise self._skip(doc, "empty text", "a text segment holds no text")
            return TextSegment(value)
        got, codes = self._codes(Path(value))
        if got != kind and got in ("image", "audio"):
            raise self._skip(doc, "wrong media type", f"{value}: a {got} file given as {kind}")
        if not isinstance(codes, torch.Tensor):
            raise self._skip(doc, got, codes)
        if kind == "image":
            return ImageSegment(codes)
        if seg.span is not None:
            codes = self._frames(doc, value, codes, seg.span)
        return AudioSegment(codes)

    def _frames(self, doc: ManifestDocument, path: Path, codes: torch.Tensor,
                span: tuple[float, float | None]) -> torch.Tensor:
        """The frames of a file's codes (K, F) that a span in seconds names."""
        rate = self.bundle.audio.frame_rate
        start = round(span[0] * rate)
        stop = codes.shape[1] if span[1] is None else min(codes.shape[1], round(span[1] * rate))
        if stop <= start:
            where = f"{span[0]:g}-{'end' if span[1] is None else f'{span[1]:g}'} s"
            raise self._skip(doc, "empty audio span", f"{path}: {where} holds no frame of its "
                             f"{codes.shape[1] / rate:.2f} s")
        return codes[:, start:stop]

    def _codes(self, path: Path) -> tuple[str, torch.Tensor | str]:
        """(kind, codes) of a media file, or (reason, detail) if it cannot be used; cached."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        try:
            result = self.bundle.encode_file(path)
        except ImageTokenizerError as e:
            result = ("unreadable image", _one_line(e))
        except AudioTokenizerError as e:
            result = ("unreadable audio", _one_line(e))
        except BundleError as e:
            result = ("unsupported media", _one_line(e))
        self._cache[path] = result
        if len(self._cache) > CACHE_FILES:
            self._cache.popitem(last=False)
        return result

    def _skip(self, doc: ManifestDocument, reason: str, detail: str) -> OmnitokError:
        where = f"{self.name}:{doc.line}"
        if self.strict:
            return BadDocument(f"{where}: {reason}: {detail}")
        return SkipDocument(reason, where, detail)

    def count_tokens(self, docs: list[np.ndarray]) -> dict[str, int]:
        """Ids per modality ("text", "image", "audio", "special": markers, grid, <bos>...)."""
        if not docs:
            return {}
        kinds = self._modality[self.vocab.range_ids(torch.from_numpy(np.concatenate(docs)))]
        counts = Counter(dict(zip(*np.unique(kinds, return_counts=True))))
        return {SPAN_KINDS[k]: int(n) for k, n in sorted(counts.items())}


def token_document(codec: DocumentCodec, doc: Document, line: int = 0) -> TokenDocument:
    """`doc` as ids (<bos> .. <eos>) and the spans of its segments; DocumentError if invalid."""
    ids = codec.encode(doc)
    spans = [(_KIND[m], a, b) for m, a, b in codec.segment_spans(ids)]
    return TokenDocument(np.array(ids, dtype=np.int64),
                         np.array(spans, dtype=np.int32).reshape(-1, 3), line)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
