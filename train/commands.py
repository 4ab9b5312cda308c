"""`omnitok tokenize`: pre-tokenize a corpus manifest into shards (train/pretokenize.py)."""

from __future__ import annotations

from pathlib import Path


def tokenize_command(manifest: Path, *, tokenizer: Path, out: Path, workers: int = 1,
                     lines_per_shard: int = 2048, strict: bool = False,
                     progress: bool = True) -> None:
    """Pre-tokenize a corpus manifest into shards of unified-vocabulary ids.

    Parallel (--workers), resumable (a rerun keeps finished shards) and deterministic (the
    same input gives byte-identical shards for any number of workers). Bad manifest lines,
    unreadable media files and empty texts are skipped and counted (--strict fails instead).

    Args:
        manifest: JSONL corpus manifest (one document of text/image/audio segments per line).
        tokenizer: tokenizer folder (text.model, image/, audio/, or a checkpoint folder).
        out: shard folder to create or resume.
        workers: processes encoding shards in parallel (each uses one thread).
        lines_per_shard: manifest lines per shard (the unit of resuming and of parallel work).
        strict: stop at the first bad line or unreadable document instead of skipping it.
        progress: show a progress bar (on a terminal).
    """
    from omnitok.train.pretokenize import tokenize_corpus

    summary = tokenize_corpus(manifest, tokenizer, out, workers=workers,
                              lines_per_shard=lines_per_shard, strict=strict, progress=progress)
    print(summary.line())
    for reason, example in sorted(summary.examples.items()):
        print(f"  skipped ({reason}), e.g. {example}")
