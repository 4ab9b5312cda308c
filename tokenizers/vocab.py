"""The unified vocabulary: one id space for special, text, image and audio tokens.

Layout (half-open ranges, in this order, no overlap, no gaps):

    special   pad, bos, eos, begin/end of image, begin/end of audio, ...
    grid      image header tokens: "the grid has n rows/columns", n = 1 .. max_grid
    text      the text tokenizer's ids 0 .. text_size-1
    image     the image tokenizer's codes 0 .. image_size-1
    audio_0   codes of RVQ level 0
    ...
    audio_K-1 codes of RVQ level K-1
    (unused)  padding up to a multiple of `pad_to`; never a valid id

Every valid id maps to exactly one (range, local id); anything else raises `VocabError`.
The audio codec's sample rate, frame rate and number of levels live here, once per vocabulary,
not per sample.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import asdict, dataclass, field
from enum import Enum

import torch

from omnitok import OmnitokError, atomic_write_text, read_json_object

FORMAT = "omnitok-vocab"
VERSION = 1
DEFAULT_SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<uncond>")
REQUIRED_SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>")


class VocabError(OmnitokError, ValueError):
    """An id outside the vocabulary, or a malformed vocabulary."""


class Modality(str, Enum):
    SPECIAL = "special"
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"


@dataclass(frozen=True)
class TokenRange:
    """Ids `start <= id < stop` belong to `name` (e.g. "audio_2": modality audio, level 2)."""

    name: str
    modality: Modality
    start: int
    stop: int
    level: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __contains__(self, token_id: int) -> bool:
        return self.start <= token_id < self.stop


@dataclass(frozen=True)
class AudioSpec:
    """What the audio codec's ids mean: `n_q` RVQ levels of `codebook_size` codes per frame."""

    codebook_size: int
    n_q: int
    sample_rate: int
    frame_rate: float
    channels: int = 1
    pattern: str = "flatten"  # how frames are serialized: "flatten" or "delay" (patterns.py)


@dataclass(frozen=True)
class Vocab:
    text_size: int
    image_size: int = 0
    audio: AudioSpec | None = None
    specials: tuple[str, ...] = DEFAULT_SPECIALS
    max_grid: int = 64
    pad_to: int = 64
    ranges: tuple[TokenRange, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        sizes = [("special", Modality.SPECIAL, len(self.specials), 0),
                 ("grid", Modality.SPECIAL, self.max_grid, 0),
                 ("text", Modality.TEXT, self.text_size, 0)]
        if self.image_size:
            sizes.append(("image", Modality.IMAGE, self.image_size, 0))
        if self.audio is not None:
            sizes += [(f"audio_{k}", Modality.AUDIO, self.audio.codebook_size, k)
                      for k in range(self.audio.n_q)]
        ranges, start = [], 0
        for name, modality, size, level in sizes:
            ranges.append(TokenRange(name, modality, start, start + size, level))
            start += size
        object.__setattr__(self, "ranges", tuple(ranges))
        object.__setattr__(self, "_by_name", {r.name: r for r in ranges})
        object.__setattr__(self, "_start_list", [r.start for r in ranges])
        object.__setattr__(self, "_starts", torch.tensor(self._start_list))

    def _validate(self) -> None:
        if self.text_size < 1:
            raise VocabError(f"text_size must be >= 1, got {self.text_size}")
        if self.image_size < 0 or self.max_grid < 1 or self.pad_to < 1:
            raise VocabError("image_size must be >= 0, max_grid and pad_to >= 1")
        if len(set(self.specials)) != len(self.specials):
            raise VocabError(f"duplicate special tokens in {self.specials}")
        missing = [s for s in REQUIRED_SPECIALS if s not in self.specials]
        if missing:
            raise VocabError(f"special tokens missing from the vocabulary: {missing}")
        a = self.audio
        if a is not None and (a.codebook_size < 1 or a.n_q < 1 or a.sample_rate < 1
                              or a.frame_rate <= 0 or a.channels < 1
                              or a.pattern not in ("flatten", "delay")):
            raise VocabError(f"invalid audio spec {a}")

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of valid ids."""
        return self.ranges[-1].stop

    @property
    def padded_size(self) -> int:
        """Rows of the embedding / logits: `size` rounded up to a multiple of `pad_to`."""
        return -(-self.size // self.pad_to) * self.pad_to

    def range(self, name: str | Modality, level: int = 0) -> TokenRange:
        """The range called `name` ("text", "image", "audio_1", ...), or a modality + level."""
        key = name.value if isinstance(name, Modality) else name
        if key == "audio":
            key = f"audio_{level}"
        elif key == "special" and level:
            raise VocabError("special tokens have no levels")
        try:
            return self._by_name[key]
        except KeyError:
            raise VocabError(f"this vocabulary has no {key!r} range "
                             f"(it has {', '.join(self._by_name)})") from None

    def has(self, modality: Modality | str) -> bool:
        key = Modality(modality)
        return any(r.modality == key for r in self.ranges)

    @property
    def audio_ranges(self) -> tuple[TokenRange, ...]:
        return tuple(r for r in self.ranges if r.modality == Modality.AUDIO)

    # ---- ids -----------------------------------------------------------------------------
    def special(self, token: str) -> int:
        """Id of a special token such as "<bos>"."""
        try:
            return self.specials.index(token)
        except ValueError:
            raise VocabError(f"unknown special token {token!r}") from None

    def grid(self, n: int) -> int:
        """Id of the image-header token meaning "n rows" (or columns), 1 <= n <= max_grid."""
        if not 1 <= n <= self.max_grid:
            raise VocabError(f"image grid side {n} outside 1..{self.max_grid}")
        return self._by_name["grid"].start + n - 1

    def grid_side(self, token_id: int) -> int:
        """Inverse of `grid`: the side length an image-header token stands for."""
        r, local = self.to_local(token_id)
        if r.name != "grid":
            raise VocabError(f"id {token_id} is not an image grid token (it is {r.name})")
        return local + 1

    def locate(self, token_id: int) -> TokenRange:
        """The range that holds `token_id`; raises `VocabError` for ids outside the vocabulary."""
        if isinstance(token_id, torch.Tensor):
            token_id = int(token_id)
        if not 0 <= token_id < self.size:
            raise VocabError(f"id {token_id} is outside the vocabulary [0, {self.size})")
        return self.ranges[bisect.bisect_right(self._start_list, token_id) - 1]

    def modality_of(self, token_id: int) -> Modality:
        return self.locate(token_id).modality

    def to_local(self, token_id: int) -> tuple[TokenRange, int]:
        """Global id -> (its range, local id within that range)."""
        r = self.locate(token_id)
        return r, int(token_id) - r.start

    def to_global(self, name: str | Modality, local: int | torch.Tensor,
                  level: int = 0) -> int | torch.Tensor:
        """Local id(s) of range `name` (and RVQ `level` for audio) -> global id(s).

        Accepts an int or an integer tensor of any shape; out-of-range locals raise.
        """
        r = self.range(name, level)
        if isinstance(local, torch.Tensor):
            if local.dtype.is_floating_point or local.dtype.is_complex or local.dtype == torch.bool:
                raise VocabError(f"{r.name} ids must be integers, got a {local.dtype} tensor")
            if local.numel() and (int(local.min()) < 0 or int(local.max()) >= r.size):
                raise VocabError(f"{r.name} ids must lie in [0, {r.size}), got "
                                 f"[{int(local.min())}, {int(local.max())}]")
            return local.long() + r.start
        if not 0 <= local < r.size:
            raise VocabError(f"{r.name} id {local} outside [0, {r.size})")
        return r.start + int(local)

    def range_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index into `ranges` for every id of an integer tensor (no checking)."""
        return torch.searchsorted(self._starts.to(token_ids.device), token_ids, right=True) - 1

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "specials": list(self.specials),
            "max_grid": self.max_grid,
            "text_size": self.text_size,
            "image_size": self.image_size,
            "audio": asdict(self.audio) if self.audio else None,
            "pad_to": self.pad_to,
            "size": self.size,
            "padded_size": self.padded_size,
            "ranges": {r.name: [r.start, r.stop] for r in self.ranges},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if d.get("format") != FORMAT:
            raise VocabError(f"not an omnitok vocabulary (format={d.get('format')!r})")
        if d.get("version") != VERSION:
            raise VocabError(f"unsupported vocabulary version {d.get('version')!r}")
        try:
            audio = AudioSpec(**d["audio"]) if d.get("audio") else None
            vocab = cls(text_size=int(d["text_size"]), image_size=int(d.get("image_size", 0)),
                        audio=audio, specials=tuple(d["specials"]),
                        max_grid=int(d["max_grid"]), pad_to=int(d["pad_to"]))
        except (KeyError, TypeError) as e:
            raise VocabError(f"malformed vocabulary: {e}") from None
        stored = d.get("ranges")
        if stored is not None and stored != vocab.to_dict()["ranges"]:
            raise VocabError("the ranges stored in the vocabulary disagree with its sizes")
        return vocab

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        return cls.from_dict(read_json_object(path, VocabError, "no such vocabulary file"))

    def describe(self) -> str:
        """A human-readable table of the layout."""
        rows = [f"{r.name:<10} [{r.start:>7}, {r.stop:>7})  {r.size:>7} ids" for r in self.ranges]
        rows.append(f"{'padding':<10} [{self.size:>7}, {self.padded_size:>7})  "
                    f"{self.padded_size - self.size:>7} ids (never valid)")
        return "\n".join(rows)
