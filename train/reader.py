"""`omnitok reader train`: the caption reader (model/reader.py) from a corpus manifest.

The pairs are the manifest's lines with exactly one image, some text and no audio; a line's
caption is its text with a leading instruction taken off ("draw: a red circle ..." and
"write:" + image + "a red circle ..." both give "a red circle ..."), as `--rerank` reads a
prompt's text. Each distinct (image, caption) pair counts once.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omnitok.model.reader import (
    KINDS,
    READER_DIRS,
    ReaderConfig,
    ReaderError,
    fingerprint,
    fit,
    make_reader,
    reader_codebooks,
    save_reader,
)
from omnitok.train.manifest import ManifestStats, iter_manifest


CHUNK = 256  # media files encoded at a time (by one worker)


def reader_pairs(manifest: Path, kind: str = "image", max_pairs: int = 0
                 ) -> tuple[list[tuple[Path, str]], ManifestStats]:
    """Distinct (media path, caption) pairs of a manifest for a reader of `kind` ("image" or
    "audio"), in order (at most `max_pairs`)."""
    from omnitok.generate.rerank import split_instruction

    other = "audio" if kind == "image" else "image"
    stats, pairs, seen = ManifestStats(), [], set()
    for doc in iter_manifest(manifest, stats):
        kinds = [s.kind for s in doc.segments]
        if kinds.count(kind) != 1 or other in kinds or "text" not in kinds:
            continue
        if any(s.span is not None for s in doc.segments if s.kind == kind):
            continue  # a part of a clip: its words are not the line's whole text
        text = " ".join(str(s.value).strip() for s in doc.segments if s.kind == "text")
        caption = split_instruction(text)[1]
        key = (doc.media(kind)[0], caption)
        if caption and key not in seen:
            seen.add(key)
            pairs.append(key)
            if max_pairs and len(pairs) >= max_pairs:
                break
    return pairs, stats


def encode_pairs(tokenizers, pairs: list[tuple[Path, str]], kind: str = "image",
                 on_batch=None, workers: int = 1, folder: Path | None = None
                 ) -> tuple[list[torch.Tensor], list[list[int]], int]:
    """(codes of each pair, caption pieces, files skipped as unreadable). A file used by
    several pairs is encoded once. Audio is encoded clip by clip: with `workers` > 1, in as
    many processes, each loading the tokenizers of `folder` and running one thread."""
    paths = list(dict.fromkeys(p for p, _ in pairs))
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    found: dict[Path, torch.Tensor] = {}
    if kind == "audio" and workers > 1 and folder is not None and len(chunks) > 1:
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(str(folder),)) as pool:
            for chunk, codes in zip(chunks, pool.map(_encode_speech_in_worker, chunks)):
                found.update(codes)
                if on_batch is not None:
                    on_batch(len(chunk))
    else:
        encode = encode_images if kind == "image" else encode_speech
        for chunk in chunks:
            found.update(encode(tokenizers, chunk))
            if on_batch is not None:
                on_batch(len(chunk))
    kept = [(p, c) for p, c in pairs if p in found]
    if not kept:
        raise ReaderError(f"no readable {kind} file among the manifest's {kind}-caption pairs")
    codes = [found[p] for p, _ in kept]
    return codes, tokenizers.text.encode_batch([c for _, c in kept]), len(paths) - len(found)


_WORKER_TOKENIZERS = None  # a worker process's tokenizers (`_start_worker`)


def _start_worker(folder: str) -> None:
    from omnitok.tokenizers.bundle import TokenizerBundle

    global _WORKER_TOKENIZERS
    torch.set_num_threads(1)
    _WORKER_TOKENIZERS = TokenizerBundle.load(folder)


def _encode_speech_in_worker(paths: list[Path]) -> dict[Path, torch.Tensor]:
    return encode_speech(_WORKER_TOKENIZERS, paths)


def encode_images(tokenizers, paths: list[Path]) -> dict[Path, torch.Tensor]:
    """Code grids (h, w) of the readable images among `paths`."""
    from omnitok.tokenizers.image_io import decode_images

    pixels, failed = decode_images(paths, tokenizers.image.config.image_size)
    if not len(pixels):
        return {}
    bad = {p for p, _ in failed}
    read = [p for p in paths if p not in bad]
    return dict(zip(read, tokenizers.image.encode(pixels.float() / 255).cpu()))


def encode_speech(tokenizers, paths: list[Path]) -> dict[Path, torch.Tensor]:
    """RVQ codes (levels, frames) of the readable audio files among `paths`."""
    from omnitok.tokenizers.audio_io import AudioTokenizerError

    out = {}
    for path in paths:
        try:
            out[path] = tokenizers.audio.encode_file(path).cpu()
        except AudioTokenizerError:
            continue
    return out


def train_reader_command(manifest: Path, *, tokenizer: Path = Path("default"),
                         kind: Literal["image", "audio"] = "image", out: Path | None = None,
                         epochs: int = 20, batch_size: int = 128, lr: float = 3e-3,
                         max_pairs: int = 0, width: int = 96, hidden: int = 128,
                         seed: int = 0, threads: int = 0, workers: int = 1,
                         progress: bool = True) -> None:
    """Train a reader that `--rerank` picks answers with: a caption reader of images, or a
    speech reader.

    Args:
        manifest: corpus manifest; its lines with one image (or one whole audio clip) and a
            caption are the pairs.
        tokenizer: checkpoint or tokenizer folder whose tokenizers it reads with (the reader
            only works beside these).
        kind: what it reads: image (picks drawn images, and captions of an image) or audio
            (picks what is written for speech).
        out: the reader folder to write (default: TOKENIZER/reader for images,
            TOKENIZER/speech_reader for audio, where a checkpoint's reranking finds it).
        epochs: passes over the pairs.
        batch_size: pairs per step.
        lr: peak learning rate (cosine to 0).
        max_pairs: take at most this many pairs (0: all).
        width: channels of the convolutions over the codes.
        hidden: size of the caption GRU.
        seed: of the initialisation and order.
        threads: torch threads (0: torch's default).
        workers: processes that encode the audio clips (one thread each).
        progress: show progress bars.
    """
    from omnitok.tokenizers.bundle import TokenizerBundle

    if epochs < 1 or batch_size < 1 or lr <= 0 or workers < 1:
        raise ReaderError("--epochs, --batch-size and --workers must be >= 1 and --lr > 0")
    if kind not in KINDS:
        raise ReaderError(f"--kind is image or audio, not {kind!r}")
    if threads:
        torch.set_num_threads(threads)
    bundle = TokenizerBundle.load(tokenizer)
    codebooks = reader_codebooks(bundle, kind)
    if codebooks is None or bundle.text is None:
        raise ReaderError(f"{tokenizer}: a reader of {kind} needs {kind} and text tokenizers")
    out = Path(out) if out is not None else Path(tokenizer) / READER_DIRS[kind]
    start = time.perf_counter()
    pairs, stats = reader_pairs(Path(manifest), kind, max_pairs)
    media = "image" if kind == "image" else "audio clip"
    if not pairs:
        raise ReaderError(f"{manifest}: no line with one {media} and a caption "
                          f"({stats.summary()})")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"encode {media}s", total=len(set(p for p, _ in pairs)), info="")
        codes, captions, bad = encode_pairs(bundle, pairs, kind,
                                            lambda n: bar.advance(task, n), workers, tokenizer)
        encoded = time.perf_counter() - start
        torch.manual_seed(seed)
        config = ReaderConfig(text_vocab=bundle.text.vocab_size,
                              codebook_size=codebooks.shape[1], code_dim=codebooks.shape[2],
                              width=width, hidden=hidden, kind=kind, levels=codebooks.shape[0])
        reader = make_reader(config, codebooks)
        steps = epochs * -(-len(captions) // batch_size)
        task = bar.add_task(f"train {kind} reader", total=steps, info="")
        loss = fit(reader, codes, captions, epochs=epochs, batch_size=batch_size, lr=lr,
                   seed=seed, on_step=lambda v: bar.update(task, advance=1,
                                                           info=f"loss {v:.3f}"))
    seconds = time.perf_counter() - start
    save_reader(out, reader, fingerprint(codebooks, bundle.text.model_proto),
                {"trained_on": str(manifest), "pairs": len(captions), "epochs": epochs,
                 "loss": round(loss, 4), "seconds": round(seconds, 1)})
    skipped = f", {bad} unreadable {media}s skipped" if bad else ""
    name = "caption reader" if kind == "image" else "speech reader"
    print(f"{out}: {name}, {len(captions)} pairs ({stats.summary()}{skipped}), "
          f"{epochs} epochs, final loss {loss:.3f} per piece; encode {encoded:.1f} s, "
          f"total {seconds:.1f} s")
