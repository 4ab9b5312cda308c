"""`omnitok tokenizer ...` subcommands."""

from __future__ import annotations

import sys
from pathlib import Path

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
