"""Tokenizer speed: images/s through the VQ image tokenizer, real-time factors of the codec.

With a tokenizer folder the trained tokenizers are timed; without one, tokenizers of the demo
configuration with random weights (speed does not depend on the weights). Inputs are random
images and noise: the figures measure compute, not quality (`omnitok tokenizer eval` does).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from omnitok.bench import time_call
from omnitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from omnitok.tokenizers.audio_codecs import set_elu
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig


def demo_tokenizers(tok: Path | None) -> tuple[ImageTokenizer | None, AudioTokenizer | None]:
    if tok is not None:
        bundle = TokenizerBundle.load(tok)
        return bundle.image, bundle.audio
    torch.manual_seed(0)
    return (ImageTokenizer(ImageTokenizerConfig()).eval(),
            AudioTokenizer(AudioTokenizerConfig()).eval())


@torch.inference_mode()
def bench_tokenizer_rows(tok: Path | None = None, *, repeats: int = 5, images: int = 64,
                         audio_seconds: float = 10.0) -> list[dict]:
    """Rows {what, direction, seconds, rate}: images/s encode and decode (a batch of
    `images`), audio real-time factor encode and decode (`audio_seconds` of audio)."""
    image_tok, audio_tok = demo_tokenizers(tok)
    rows = []
    if image_tok is not None:
        size = image_tok.config.image_size
        batch = torch.rand(images, 3, size, size) * 2 - 1
        codes = image_tok.encode(batch)
        for direction, fn in (("encode", lambda: image_tok.encode(batch)),
                              ("decode", lambda: image_tok.decode(codes))):
            t = time_call(fn, repeats)
            rows.append({"what": f"image {size}x{size}", "direction": direction,
                         "seconds": asdict(t), "rate": images / t.median,
                         "unit": "images/s"})
    if audio_tok is not None:
        rows += _audio_rows(audio_tok, repeats, audio_seconds)
    return rows


def _audio_rows(tok: AudioTokenizer, repeats: int, seconds: float) -> list[dict]:
    """Encode and decode real-time factors, then the same with torch's `nn.ELU` (baseline)."""
    wav = 0.1 * torch.randn(tok.channels, round(seconds * tok.sample_rate))
    codes = tok.encode_long(wav)
    rows = []
    try:
        for label, fast in (("", True), (" nn.ELU", False)):
            set_elu(tok, fast)
            for direction, fn in (("encode", lambda: tok.encode_long(wav)),
                                  ("decode", lambda: tok.decode_long(codes))):
                took = time_call(fn, repeats)
                rows.append({"what": f"audio {tok.sample_rate // 1000} kHz{label}",
                             "direction": direction, "seconds": asdict(took),
                             "rate": seconds / took.median, "unit": "x real time"})
    finally:
        set_elu(tok, True)
    return rows


def print_tokenizer_rows(rows: list[dict]) -> None:
    print(f"{'tokenizer':<24}{'direction':<10}{'rate':>12}  {'unit':<12}{'spread (s)':>16}")
    for r in rows:
        s = r["seconds"]
        print(f"{r['what']:<24}{r['direction']:<10}{r['rate']:>12.1f}  {r['unit']:<12}"
              f"{s['low']:>8.3f}-{s['high']:.3f}")


def bench_tokenizers(*, tok: Path | None = None, repeats: int = 5, images: int = 64,
                     audio_seconds: float = 10.0, threads: int | None = None,
                     json: Path | None = None) -> None:
    """Images/s of the image tokenizer and real-time factors of the audio codec.

    Args:
        tok: tokenizer folder (default: the demo configuration with random weights).
        repeats: timed runs per figure (after one warm-up run).
        images: images per encode/decode batch.
        audio_seconds: length of the audio clip.
        threads: CPU threads (default: torch's).
        json: also write the rows here.
    """
    from omnitok.bench import machine, write_report

    if threads:
        torch.set_num_threads(threads)
    info = {**machine(), "tokenizers": str(tok) if tok else "demo configuration, random"}
    rows = bench_tokenizer_rows(tok, repeats=repeats, images=images,
                                audio_seconds=audio_seconds)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    print_tokenizer_rows(rows)
    if json is not None:
        write_report(json, {"info": info, "tokenizers": rows})
