"""A tokenizer bundle: the text, image and audio tokenizers of a folder and their vocabulary.

Folder layout (every part optional except where noted):

    vocab.json      the unified vocabulary (built from the tokenizers when absent)
    text.model      sentencepiece text tokenizer (required to build a vocabulary)
    image/          VQ image tokenizer (config.json + model.safetensors)
    audio/          RVQ audio codec (config.json + model.safetensors)

A checkpoint folder is a bundle plus the model's weights and config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from omnitok import OmnitokError, atomic_write_text
from omnitok.tokenizers.document import (
    AudioSegment,
    Document,
    DocumentCodec,
    ImageSegment,
    Segment,
    TextSegment,
)
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import Vocab

if TYPE_CHECKING:
    from omnitok.tokenizers.audio import AudioTokenizer
    from omnitok.tokenizers.image import ImageTokenizer

VOCAB, IMAGE, AUDIO = "vocab.json", "image", "audio"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class BundleError(OmnitokError):
    """Tokenizers that are missing or do not agree with their vocabulary."""


@dataclass
class TokenizerBundle:
    vocab: Vocab
    text: TextTokenizer | None = None
    image: ImageTokenizer | None = None
    audio: AudioTokenizer | None = None

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def build(cls, text: TextTokenizer, image: ImageTokenizer | None = None,
              audio: AudioTokenizer | None = None, **vocab_options) -> TokenizerBundle:
        """A bundle whose vocabulary is sized from the tokenizers given."""
        if image is not None:
            side = max(image.config.image_size // image.config.downsample, 1)
            vocab_options.setdefault("max_grid", max(64, side))
        vocab = Vocab(text_size=text.vocab_size,
                      image_size=image.config.codebook_size if image is not None else 0,
                      audio=audio.spec() if audio is not None else None, **vocab_options)
        return cls(vocab, text, image, audio)

    def check(self) -> None:
        """Raise BundleError where a tokenizer does not fit the vocabulary's ranges."""
        v = self.vocab
        if self.text is not None and self.text.vocab_size > v.text_size:
            raise BundleError(f"the text tokenizer has {self.text.vocab_size} pieces but the "
                              f"vocabulary's text range holds {v.text_size}")
        if self.image is not None and self.image.config.codebook_size != v.image_size:
            raise BundleError(f"the image tokenizer has {self.image.config.codebook_size} codes "
                              f"but the vocabulary's image range holds {v.image_size}")
        if self.audio is not None and (v.audio is None or self.audio.spec() != replace(
                v.audio, pattern="flatten")):  # the serialization order is the vocab's choice
            raise BundleError(f"the audio codec ({self.audio.spec()}) does not match the "
                              f"vocabulary's audio ({v.audio})")

    def codec(self) -> DocumentCodec:
        """Documents <-> ids with these tokenizers."""
        return DocumentCodec(self.vocab, self.text)

    # ---- media files ---------------------------------------------------------------------
    def encode_file(self, path: Path) -> tuple[str, torch.Tensor]:
        """(kind, local codes) of a media file: image (h, w) or audio (K, F)."""
        kind = media_kind(path)
        if kind == "image":
            from omnitok.tokenizers.image import load_image

            image_tok = self._need("image", path)
            image = load_image(path, image_tok.config.image_size)
            return kind, image_tok.encode(image[None])[0]
        from omnitok.tokenizers.audio import load_audio

        audio_tok = self._need("audio", path)
        return kind, audio_tok.encode_long(load_audio(path, audio_tok.sample_rate,
                                                      audio_tok.channels))

    def decode_to_file(self, kind: str, codes: torch.Tensor, path: Path) -> None:
        """Write image codes (h, w) as a PNG or audio codes (K, F) as a WAV, atomically."""
        if media_kind(path) != kind:
            raise BundleError(f"{path}: cannot write {kind} codes to a {path.suffix} file")
        if kind == "image":
            from omnitok.tokenizers.image import save_image

            save_image(self._need("image", path).decode(codes[None])[0], path)
            return
        from omnitok.tokenizers.audio import save_audio

        audio_tok = self._need("audio", path)
        save_audio(audio_tok.decode(codes[None])[0], audio_tok.sample_rate, path)

    def document(self, segments: list[tuple[str, str | Path]]) -> Document:
        """A Document from (kind, text or media path) pairs, media encoded to codes."""
        out: list[Segment] = []
        for kind, value in segments:
            if kind == "text":
                out.append(TextSegment(str(value)))
                continue
            got, codes = self.encode_file(Path(value))
            if got != kind:
                raise BundleError(f"{value}: a {got} file given as {kind}")
            out.append(ImageSegment(codes) if kind == "image" else AudioSegment(codes))
        return Document(out)

    def write_document(self, doc: Document, folder: Path, stem: str) -> list[Path]:
        """Write each segment of `doc` as stem_<i>.txt / .png / .wav in `folder`; the paths."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, seg in enumerate(doc):
            path = folder / f"{stem}_{i}"
            if isinstance(seg, TextSegment):
                path = path.with_suffix(".txt")
                atomic_write_text(path, seg.text + "\n")
            elif isinstance(seg, (ImageSegment, AudioSegment)):
                kind = "image" if isinstance(seg, ImageSegment) else "audio"
                path = path.with_suffix(".png" if kind == "image" else ".wav")
                self.decode_to_file(kind, seg.codes, path)
            else:
                continue
            paths.append(path)
        return paths

    def _need(self, kind: str, path: Path):
        tokenizer = getattr(self, kind)
        if tokenizer is None:
            raise BundleError(f"{path}: this tokenizer folder has no {kind} tokenizer")
        return tokenizer

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Write vocab.json and every tokenizer present into `folder` (which must exist)."""
        folder = Path(folder)
        self.vocab.save(folder / VOCAB)
        if self.text is not None:
            self.text.save(folder)
        if self.image is not None:
            self.image.save(folder / IMAGE)
        if self.audio is not None:
            self.audio.save(folder / AUDIO)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TokenizerBundle:
        """The tokenizers in `folder`; its vocab.json, or one built from them."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(f"{folder}: no such tokenizer folder")
        text_file = folder / TextTokenizer.FILENAME
        text = TextTokenizer.load(text_file) if text_file.exists() else None
        image = _load_image(folder / IMAGE)
        audio = _load_audio(folder / AUDIO)
        if (folder / VOCAB).exists():
            return cls(Vocab.load(folder / VOCAB), text, image, audio)
        if text is None:
            raise BundleError(f"{folder}: no vocab.json and no {TextTokenizer.FILENAME} to "
                              "build one from")
        return cls.build(text, image, audio)


def media_kind(path: Path) -> str:
    """"image" or "audio" from a file name; anything else is an error."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    raise BundleError(f"{path}: unknown media type {suffix!r} (images: "
                      f"{' '.join(IMAGE_SUFFIXES)}; audio: {' '.join(AUDIO_SUFFIXES)})")


def _load_image(folder: Path) -> ImageTokenizer | None:
    if not folder.is_dir():
        return None
    from omnitok.tokenizers.image import ImageTokenizer

    return ImageTokenizer.load(folder)


def _load_audio(folder: Path) -> AudioTokenizer | None:
    if not folder.is_dir():
        return None
    from omnitok.tokenizers.audio import AudioTokenizer

    return AudioTokenizer.load(folder)
