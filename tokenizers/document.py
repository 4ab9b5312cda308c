"""Documents (ordered text / image / audio segments) <-> one stream of unified vocabulary ids.

Id stream grammar (the generation grammar follows the same contract):

    stream = [<bos>] ( text-ids | special | IMAGE | AUDIO )* [<eos>]
    IMAGE  = <boi> grid(h) grid(w) h*w image ids (raster order) <eoi>
    AUDIO  = <boa> frames of K ids each (ordered by the RVQ pattern) <eoa>

`special` is any vocabulary special token that is not structural (e.g. "<uncond>"); it
decodes to a `SpecialSegment`. Positions in error messages index the id stream as given.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from omnitok import OmnitokError
from omnitok.tokenizers.patterns import PatternError, RVQPattern, make_pattern
from omnitok.tokenizers.vocab import Modality, Vocab, VocabError

STRUCTURAL = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>")
_MODALITIES = list(Modality)


class DocumentError(OmnitokError, ValueError):
    """A document or an id stream that cannot be converted (the message names where)."""


class InvalidSegment(DocumentError):
    """encode: a segment that this vocabulary / codec cannot serialize."""


class InvalidId(DocumentError, VocabError):
    """decode: an id outside the vocabulary (or the text tokenizer); also a `VocabError`."""


class UnterminatedSegment(DocumentError):
    """decode: the stream ends (or reaches <eos>) inside an image or audio segment."""


class WrongCodeCount(DocumentError):
    """decode: an image with not h*w codes, or an audio segment that is not whole frames."""


class WrongModality(DocumentError):
    """decode: a non-special id of the wrong modality (or RVQ level) at a position."""


class BadHeader(DocumentError):
    """decode: <boi> not followed by two grid tokens."""


class UnexpectedToken(DocumentError):
    """decode: a special token out of place (stray <eoi>/<eoa>, <pad>, late <bos>, ...)."""


@dataclass
class TextSegment:
    text: str


@dataclass
class SpecialSegment:
    """A non-structural special token such as "<uncond>" standing on its own."""

    token: str


@dataclass(eq=False)
class _CodesSegment:
    codes: torch.Tensor

    def __post_init__(self) -> None:
        self.codes = torch.as_tensor(self.codes)

    def __eq__(self, other: object) -> bool:
        """Same type, same shape, same values (any integer dtype or device)."""
        return (type(other) is type(self) and self.codes.shape == other.codes.shape
                and torch.equal(self.codes.long().cpu(), other.codes.long().cpu()))


@dataclass(eq=False)
class ImageSegment(_CodesSegment):
    codes: torch.Tensor  # (H, W) local image codes


@dataclass(eq=False)
class AudioSegment(_CodesSegment):
    codes: torch.Tensor  # (K, T) local RVQ codes, K == vocab.audio.n_q


Segment = TextSegment | SpecialSegment | ImageSegment | AudioSegment


@dataclass
class Document:
    """An ordered list of segments; equality compares code tensors by value.

    The id stream cannot tell where one text segment ends and the next begins, so
    `decode(encode(doc)) == doc.normalized()` (adjacent text merged, empty text dropped);
    `encode` merges adjacent text before tokenizing, so this holds for any text tokenizer
    whose own round trip is exact.
    """

    segments: list[Segment] = field(default_factory=list)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> Segment:
        return self.segments[i]

    def normalized(self) -> Document:
        """Adjacent text segments merged, empty text segments dropped."""
        out: list[Segment] = []
        for seg in self.segments:
            if isinstance(seg, TextSegment):
                if not seg.text:
                    continue
                if out and isinstance(out[-1], TextSegment):
                    out[-1] = TextSegment(out[-1].text + seg.text)
                    continue
            out.append(seg)
        return Document(out)


class TextLike(Protocol):
    """What the codec needs from a text tokenizer (ids 0 .. vocab_size-1)."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class _Span:
    """A parsed segment: ids [start, stop) of the stream, with what they carry."""

    modality: Modality
    start: int
    stop: int
    payload: object  # text: list of local ids; image/audio: codes; special: token name


class DocumentCodec:
    """Encodes `Document`s to id lists and decodes id streams back, checking the grammar."""

    def __init__(self, vocab: Vocab, text: TextLike | None = None,
                 pattern: RVQPattern | None = None) -> None:
        if text is not None and text.vocab_size > vocab.text_size:
            raise VocabError(f"the text tokenizer has {text.vocab_size} ids but the "
                             f"vocabulary's text range holds {vocab.text_size}")
        if pattern is None and vocab.audio is not None:
            pattern = make_pattern(vocab.audio.pattern, vocab.audio.n_q)
        if pattern is not None and (vocab.audio is None or pattern.n_q != vocab.audio.n_q):
            raise VocabError(f"pattern with {pattern.n_q} levels does not fit the "
                             f"vocabulary's audio spec {vocab.audio}")
        self.vocab, self.text, self.pattern = vocab, text, pattern
        self._sp = {name: vocab.special(name) for name in STRUCTURAL}

    # ---- encode --------------------------------------------------------------------------
    def encode(self, doc: Document, *, bos: bool = True, eos: bool = True) -> list[int]:
        """Document -> global ids; raises `InvalidSegment` naming the segment index.

        Adjacent text segments are encoded as one text (as `decode` will return them).
        """
        ids = [self._sp["<bos>"]] if bos else []
        text: list[tuple[int, str]] = []  # (index, text) of adjacent text segments
        for i, seg in enumerate([*doc, None]):
            if isinstance(seg, TextSegment) and isinstance(seg.text, str):
                text.append((i, seg.text))
                continue
            if text:
                ids += self._checked(text[0][0], TextSegment, self._encode_text,
                                     "".join(t for _, t in text))
                text = []
            if seg is not None:
                ids += self._checked(i, type(seg), self._encode_segment, seg)
        return ids + [self._sp["<eos>"]] if eos else ids

    @staticmethod
    def _checked(i: int, kind: type, fn, arg) -> list[int]:
        try:
            return fn(arg)
        except (VocabError, PatternError) as e:
            raise InvalidSegment(f"segment {i} ({kind.__name__}): {e}") from None

    def _encode_segment(self, seg: Segment) -> list[int]:
        if isinstance(seg, TextSegment):
            return self._encode_text(seg.text)
        if isinstance(seg, ImageSegment):
            return self._encode_image(seg.codes)
        if isinstance(seg, AudioSegment):
            if self.pattern is None:
                raise VocabError("this vocabulary has no audio ranges")
            return [self._sp["<boa>"], *self.pattern.build(seg.codes, self.vocab).tolist(),
                    self._sp["<eoa>"]]
        if isinstance(seg, SpecialSegment):
            if seg.token in STRUCTURAL:
                raise VocabError(f"{seg.token} is structural; it cannot be a segment")
            return [self.vocab.special(seg.token)]
        raise VocabError(f"not a segment: {seg!r}")

    def _encode_text(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise VocabError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return []
        if self.text is None:
            raise VocabError("text present but the codec has no text tokenizer")
        local = torch.tensor([operator.index(i) for i in self.text.encode(text)],
                             dtype=torch.long)
        return self.vocab.to_global("text", local).tolist()

    def _encode_image(self, codes: torch.Tensor) -> list[int]:
        if codes.ndim != 2 or codes.is_floating_point() or codes.dtype == torch.bool:
            raise VocabError(f"image codes must be a 2-D integer tensor, "
                             f"got {codes.dtype} {tuple(codes.shape)}")
        h, w = codes.shape
        if h == 0 or w == 0:
            raise VocabError(f"empty image ({h}x{w})")
        header = [self._sp["<boi>"], self.vocab.grid(h), self.vocab.grid(w)]
        body = self.vocab.to_global("image", codes.reshape(-1)).tolist()  # raster order
        return header + body + [self._sp["<eoi>"]]

    # ---- decode --------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, *, strict: bool = True) -> Document:
        """Global ids -> Document. <bos> only at position 0; <eos> ends the document: with
        `strict` anything after it raises `UnexpectedToken`, otherwise it is ignored.

        Raises a `DocumentError` subclass naming the position; ids outside the vocabulary
        raise `InvalidId` (both a `DocumentError` and a `VocabError`).
        """
        return Document([self._segment(s) for s in self._parse(ids, strict)])

    def segment_spans(self, ids: Sequence[int] | torch.Tensor, *,
                      strict: bool = True) -> list[tuple[Modality, int, int]]:
        """(modality, start, stop) of every segment, markers included (<boi> .. <eoi>);
        <bos>/<eos> belong to no span; a SpecialSegment is (SPECIAL, p, p + 1)."""
        return [(s.modality, s.start, s.stop) for s in self._parse(ids, strict)]

    def _segment(self, span: _Span) -> Segment:
        if span.modality == Modality.IMAGE:
            return ImageSegment(span.payload)
        if span.modality == Modality.AUDIO:
            return AudioSegment(span.payload)
        if span.modality == Modality.SPECIAL:
            return SpecialSegment(span.payload)
        if self.text is None:
            raise DocumentError(f"position {span.start}: text ids but the codec has no "
                                f"text tokenizer")
        for p, i in enumerate(span.payload, span.start):
            if i >= self.text.vocab_size:
                raise InvalidId(f"position {p}: text id {i} is outside the text "
                                f"tokenizer's {self.text.vocab_size} ids")
        return TextSegment(self.text.decode(span.payload))

    def _parse(self, ids: Sequence[int] | torch.Tensor, strict: bool) -> list[_Span]:
        return _Parser(self, _as_ids(ids, self.vocab)).parse(strict)


def _as_ids(ids: Sequence[int] | torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """A 1-D int64 tensor of ids, each in [0, vocab.size); else `InvalidId` naming where."""
    if not isinstance(ids, torch.Tensor):
        ids = _list_to_tensor(list(ids), vocab.size)
    if ids.ndim != 1:
        raise InvalidId(f"expected a 1-D id stream, got shape {tuple(ids.shape)}")
    if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
        raise InvalidId(f"ids must be integers, got {ids.dtype}")
    ids = ids.long().cpu()
    bad = ((ids < 0) | (ids >= vocab.size)).nonzero()
    if len(bad):
        p = int(bad[0])
        raise InvalidId(f"position {p}: id {int(ids[p])} is outside the vocabulary "
                        f"[0, {vocab.size})")
    return ids


def _list_to_tensor(ids: list, size: int) -> torch.Tensor:
    """Fast conversion if every entry is an integer; else `InvalidId` at the first bad one."""
    try:
        t = torch.as_tensor(ids)
        if not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            return t
    except (TypeError, ValueError, RuntimeError, OverflowError):
        pass
    for p, x in enumerate(ids):
        try:
            if not 0 <= operator.index(x) < size:
                raise InvalidId(f"position {p}: id {x} is outside the vocabulary [0, {size})")
        except TypeError:
            raise InvalidId(f"position {p}: {x!r} is not an integer id") from None
    return torch.tensor([operator.index(x) for x in ids], dtype=torch.long)


class _Parser:
    """One pass over a stream of in-vocabulary ids, following the module's grammar."""

    def __init__(self, codec: DocumentCodec, ids: torch.Tensor) -> None:
        self.vocab, self.pattern, self.sp = codec.vocab, codec.pattern, codec._sp
        self.ids, self.list = ids, ids.tolist()
        self.kind = self.vocab.range_ids(ids)  # (N,) index into vocab.ranges
        eos = (ids == self.sp["<eos>"]).nonzero()
        self.stop = int(eos[0]) if len(eos) else len(ids)  # parsing ends here
        modality = torch.tensor([_MODALITIES.index(r.modality) for r in self.vocab.ranges])
        self.modality = modality[self.kind]  # (N,) index into _MODALITIES
        changes = (self.modality[1:] != self.modality[:-1]).nonzero().flatten() + 1
        self.run_stops = torch.cat([changes, torch.tensor([len(ids)])])  # same-modality runs

    def parse(self, strict: bool) -> list[_Span]:
        pos = 1 if self.list[:1] == [self.sp["<bos>"]] else 0
        spans = []
        while pos < self.stop:
            spans.append(self._next(pos))
            pos = spans[-1].stop
        if strict and self.stop + 1 < len(self.list):
            raise UnexpectedToken(f"position {self.stop + 1}: {self._desc(self.stop + 1)} "
                                  f"after <eos> (position {self.stop})")
        return spans

    def _next(self, pos: int) -> _Span:
        r, tok = self.vocab.ranges[int(self.kind[pos])], self.list[pos]
        if r.modality == Modality.TEXT:
            stop = self._run_end(pos, Modality.TEXT)
            return _Span(Modality.TEXT, pos, stop, [i - r.start for i in self.list[pos:stop]])
        if tok == self.sp["<boi>"]:
            return self._image(pos)
        if tok == self.sp["<boa>"]:
            return self._audio(pos)
        if r.name == "special" and self.vocab.specials[tok] not in STRUCTURAL:
            return _Span(Modality.SPECIAL, pos, pos + 1, self.vocab.specials[tok])
        raise self._misplaced(pos, "in text position", "text, <boi>, <boa> or <eos>")

    def _image(self, pos: int) -> _Span:
        if not self.vocab.has(Modality.IMAGE):
            raise UnexpectedToken(f"position {pos}: <boi> but the vocabulary has no images")
        h, w = self._header(pos)
        start, stop, image = pos + 3, pos + 3 + h * w, self.vocab.range("image")
        where = f"the {h}x{w} image opened at position {pos}"
        j = self._run_end(start, Modality.IMAGE)  # first non-image id
        if j == stop < self.stop and self.list[j] == self.sp["<eoi>"]:
            codes = (self.ids[start:stop] - image.start).view(h, w)
            return _Span(Modality.IMAGE, pos, stop + 1, codes)
        if j > stop:
            raise WrongCodeCount(f"position {stop}: more than {h * w} codes in {where}")
        if j >= self.stop:
            raise UnterminatedSegment(self._ends(pos, "image", "image ids and <eoi>"))
        if self.list[j] == self.sp["<eoi>"]:
            raise WrongCodeCount(f"position {j}: <eoi> after {j - start} codes but {where} "
                                 f"needs {h * w}")
        raise self._misplaced(j, f"inside {where}", "an image id" if j < stop else "<eoi>")

    def _header(self, pos: int) -> tuple[int, int]:
        """(h, w) from the two grid tokens after the <boi> at `pos`."""
        grid, side = self.vocab.range("grid"), []
        for p in (pos + 1, pos + 2):
            if p >= self.stop:
                raise UnterminatedSegment(self._ends(pos, "image", "a grid token"))
            if self.list[p] not in grid:
                raise BadHeader(f"position {p}: expected a grid token after <boi> at "
                                f"position {pos}, got {self._desc(p)}")
            side.append(self.list[p] - grid.start + 1)
        return side[0], side[1]

    def _audio(self, pos: int) -> _Span:
        if self.pattern is None:
            raise UnexpectedToken(f"position {pos}: <boa> but the vocabulary has no audio")
        first, n_q = self.vocab.ranges.index(self.vocab.range("audio", 0)), self.pattern.n_q
        stop = self._run_end(pos + 1, Modality.AUDIO)
        expected = self.pattern.levels(stop - pos - 1)
        j = self._first(self.kind[pos + 1:stop] - first != expected, pos + 1)
        if j < stop:
            raise WrongModality(f"position {j}: expected an audio_{int(expected[j - pos - 1])} "
                                f"id in the audio opened at position {pos}, "
                                f"got {self._desc(j)}")
        if stop >= self.stop:
            raise UnterminatedSegment(self._ends(pos, "audio", "audio ids or <eoa>"))
        if self.list[stop] != self.sp["<eoa>"]:
            raise self._misplaced(stop, f"inside the audio opened at position {pos}",
                                  "an audio id or <eoa>")
        if (stop - pos - 1) % n_q:
            raise WrongCodeCount(f"position {stop}: <eoa> after {stop - pos - 1} audio ids, "
                                 f"not whole frames of {n_q} (audio opened at position {pos})")
        codes = self.pattern.revert(self.ids[pos + 1:stop], self.vocab)
        return _Span(Modality.AUDIO, pos, stop + 1, codes)

    def _run_end(self, pos: int, modality: Modality) -> int:
        """The first position >= `pos` whose id is not of `modality` (at most `self.stop`)."""
        if pos >= self.stop or int(self.modality[pos]) != _MODALITIES.index(modality):
            return min(pos, self.stop)
        i = torch.searchsorted(self.run_stops, torch.tensor(pos), right=True)
        return min(int(self.run_stops[i]), self.stop)

    @staticmethod
    def _first(mask: torch.Tensor, offset: int) -> int:
        """offset + index of the first True in the 1-D `mask` (offset + len(mask) if none)."""
        hit = mask.nonzero()
        return offset + (int(hit[0]) if len(hit) else len(mask))

    def _ends(self, opened: int, what: str, expected: str) -> str:
        at = " (at <eos>)" if self.stop < len(self.list) else ""
        return (f"position {self.stop}: the stream ends{at} inside the {what} segment opened "
                f"at position {opened}; expected {expected}")

    def _misplaced(self, pos: int, where: str, expected: str) -> DocumentError:
        """A special token out of place -> UnexpectedToken, any other id -> WrongModality."""
        special = self.vocab.ranges[int(self.kind[pos])].modality == Modality.SPECIAL
        cls = UnexpectedToken if special else WrongModality
        return cls(f"position {pos}: unexpected {self._desc(pos)} {where}; expected {expected}")

    def _desc(self, pos: int) -> str:
        r, local = self.vocab.to_local(self.list[pos])
        if r.name == "special":
            return self.vocab.specials[local]
        return f"grid({local + 1})" if r.name == "grid" else f"{r.name} id {local}"
