"""`omnitok tokenizer ...` subcommands: train the text tokenizer, encode / decode / round-trip
media files with a tokenizer folder (see tokenizers/bundle.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from omnitok import OmnitokError, atomic_path
from omnitok.tokenizers.bundle import TokenizerBundle, media_kind
from omnitok.tokenizers.text import TextTokenizer


def train_text(*, data: list[Path], out: Path, vocab_size: int = 8000,
               character_coverage: float = 1.0, max_sentences: int = 2_000_000,
               seed: int = 0) -> None:
    """Train the sentencepiece BPE text tokenizer (byte fallback, so any text encodes).

    Args:
        data: JSONL manifests (the text segments of every document are used) or plain text
            files (one sentence per line).
        out: folder to write `text.model` into (created if needed).
        vocab_size: number of pieces, including 256 byte pieces.
        character_coverage: share of characters covered by pieces; the rest fall back to bytes.
        max_sentences: sample at most this many sentences (seeded) for training.
        seed: random seed for sampling and training.
    """
    tok = TextTokenizer.train(data, vocab_size, character_coverage=character_coverage,
                              max_sentences=max_sentences, seed=seed)
    path = tok.save(out)
    print(path, file=sys.stdout)


def encode(tok: Path, file: Path, *, out: Path | None = None) -> None:
    """Encode an image or audio file to codes: printed, and saved as .npy with --out.

    Args:
        tok: tokenizer folder (image/, audio/ inside).
        file: the image (png, jpg, ...) or audio (wav, flac, ...) file.
        out: write the codes here as a .npy array ((h, w) for images, (K, F) for audio).
    """
    kind, codes = TokenizerBundle.load(tok).encode_file(file)
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, codes.numpy().astype(np.int64))
    shape = "x".join(map(str, codes.shape))
    print(f"{file}: {kind} codes {shape}" + (f" -> {out}" if out else ""))
    if out is None:
        np.set_printoptions(threshold=2000, linewidth=100)
        print(codes.numpy())


def decode(tok: Path, codes: Path, *, output: Path) -> None:
    """Decode a .npy array of codes back to a PNG (2-D image codes) or WAV (K x F audio codes).

    Args:
        tok: tokenizer folder.
        codes: .npy file written by `omnitok tokenizer encode --out`.
        output: the .png or .wav file to write.
    """
    try:
        array = np.load(codes, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OmnitokError(f"{codes}: not a .npy array of codes ({e})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise OmnitokError(f"{codes}: expected a 2-D integer array, got {array.dtype} "
                           f"{array.shape}")
    TokenizerBundle.load(tok).decode_to_file(media_kind(output), torch.from_numpy(array).long(),
                                             output)
    print(output)


def roundtrip(tok: Path, file: Path, *, output: Path) -> None:
    """Encode then decode a file, to hear or see what the tokenizer keeps.

    Args:
        tok: tokenizer folder.
        file: the image or audio file.
        output: where to write the reconstruction (same kind of file).
    """
    bundle = TokenizerBundle.load(tok)
    kind, codes = bundle.encode_file(file)
    bundle.decode_to_file(kind, codes, output)
    print(f"{file} -> {'x'.join(map(str, codes.shape))} {kind} codes -> {output}")
