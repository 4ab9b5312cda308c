"""`omnitok reader train`: the caption reader (model/reader.py) from a corpus manifest.

The pairs are the manifest's lines with exactly one image, some text and no audio; a line's
caption is its text with a leading instruction taken off ("draw: a red circle ..." and
"write:" + image + "a red circle ..." both give "a red circle ..."), as `--rerank` reads a
prompt's text. Each distinct (image, caption) pair counts once.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omnitok.model.reader import (
    READER_DIR,
    CaptionReader,
    ReaderConfig,
    ReaderError,
    fingerprint,
    fit,
    save_reader,
)
from omnitok.train.manifest import ManifestStats, iter_manifest


def reader_pairs(manifest: Path, max_pairs: int = 0) -> tuple[list[tuple[Path, str]],
                                                                   ManifestStats]:
    """Distinct (image path, caption) pairs of a manifest, in order (at most `max_pairs`)."""
    from omnitok.generate.rerank import split_instruction

    stats, pairs, seen = ManifestStats(), [], set()
    for doc in iter_manifest(manifest, stats):
        kinds = [s.kind for s in doc.segments]
        if kinds.count("image") != 1 or "audio" in kinds or "text" not in kinds:
            continue
        text = " ".join(str(s.value).strip() for s in doc.segments if s.kind == "text")
        caption = split_instruction(text)[1]
        key = (doc.media("image")[0], caption)
        if caption and key not in seen:
            seen.add(key)
            pairs.append(key)
            if max_pairs and len(pairs) >= max_pairs:
                break
    return pairs, stats


def encode_pairs(tokenizers, pairs: list[tuple[Path, str]], on_batch=None
                 ) -> tuple[torch.Tensor, list[list[int]], int]:
    """(codes (N, h, w), caption pieces, images skipped as unreadable). An image used by
    several pairs is encoded once."""
    from omnitok.tokenizers.image_io import decode_images

    image, size = tokenizers.image, tokenizers.image.config.image_size
    paths = list(dict.fromkeys(p for p, _ in pairs))
    grids: dict[Path, torch.Tensor] = {}
    for i in range(0, len(paths), 256):
        chunk = paths[i:i + 256]
        pixels, failed = decode_images(chunk, size)
        if len(pixels):
            bad = {p for p, _ in failed}
            read = [p for p in chunk if p not in bad]
            grids.update(zip(read, image.encode(pixels.float() / 255).cpu()))
        if on_batch is not None:
            on_batch(len(chunk))
    kept = [(p, c) for p, c in pairs if p in grids]
    if not kept:
        raise ReaderError("no readable image among the manifest's image-caption pairs")
    codes = torch.stack([grids[p] for p, _ in kept])
    return codes, tokenizers.text.encode_batch([c for _, c in kept]), len(paths) - len(grids)


def train_reader_command(manifest: Path, *, tokenizer: Path = Path("default"),
                         out: Path | None = None, epochs: int = 20, batch_size: int = 128,
                         lr: float = 3e-3, max_pairs: int = 0, width: int = 96,
                         hidden: int = 128, seed: int = 0, threads: int = 0,
                         progress: bool = True) -> None:
    """Train the caption reader that `--rerank` picks images with.

    Args:
        manifest: corpus manifest; its lines with one image and a caption are the pairs.
        tokenizer: checkpoint or tokenizer folder whose image and text tokenizers it reads
            with (the reader only works beside these).
        out: the reader folder to write (default: TOKENIZER/reader, where a checkpoint's
            reranking finds it).
        epochs: passes over the pairs.
        batch_size: pairs per step.
        lr: peak learning rate (cosine to 0).
        max_pairs: take at most this many pairs (0: all).
        width: channels of the convolutions over the code grid.
        hidden: size of the caption GRU.
        seed: of the initialisation and order.
        threads: torch threads (0: torch's default).
        progress: show progress bars.
    """
    from omnitok.tokenizers.bundle import TokenizerBundle

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ReaderError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if threads:
        torch.set_num_threads(threads)
    bundle = TokenizerBundle.load(tokenizer)
    if bundle.image is None or bundle.text is None:
        raise ReaderError(f"{tokenizer}: the reader needs an image and a text tokenizer")
    out = Path(out) if out is not None else Path(tokenizer) / READER_DIR
    start = time.perf_counter()
    pairs, stats = reader_pairs(Path(manifest), max_pairs)
    if not pairs:
        raise ReaderError(f"{manifest}: no line with one image and a caption "
                          f"({stats.summary()})")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        n_images = len(set(p for p, _ in pairs))
        task = bar.add_task("encode images", total=n_images, info="")
        codes, captions, bad = encode_pairs(bundle, pairs, lambda n: bar.advance(task, n))
        encoded = time.perf_counter() - start
        torch.manual_seed(seed)
        image = bundle.image
        config = ReaderConfig(text_vocab=bundle.text.vocab_size,
                              codebook_size=image.config.codebook_size,
                              code_dim=image.codebook.shape[1], width=width, hidden=hidden)
        reader = CaptionReader(config, image.codebook)
        steps = epochs * -(-len(captions) // batch_size)
        task = bar.add_task("train reader", total=steps, info="")
        loss = fit(reader, codes, captions, epochs=epochs, batch_size=batch_size, lr=lr,
                   seed=seed, on_step=lambda v: bar.update(task, advance=1,
                                                           info=f"loss {v:.3f}"))
    seconds = time.perf_counter() - start
    save_reader(out, reader, fingerprint(image.codebook, bundle.text.model_proto),
                {"trained_on": str(manifest), "pairs": len(captions), "epochs": epochs,
                 "loss": round(loss, 4), "seconds": round(seconds, 1)})
    skipped = f", {bad} unreadable images skipped" if bad else ""
    print(f"{out}: caption reader, {len(captions)} pairs ({stats.summary()}{skipped}), "
          f"{epochs} epochs, final loss {loss:.3f} per piece; encode {encoded:.1f} s, "
          f"total {seconds:.1f} s")
