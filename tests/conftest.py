"""Shared fixtures: small deterministic corpora and a trained text tokenizer."""

from __future__ import annotations

import json
import random

import pytest
import torch

WORDS = ("red green blue yellow purple orange black white circle square triangle star "
         "hexagon on a the background small large left right top bottom says hello world "
         "picture of with and sound image text speech").split()


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory):
    """A small manifest of text-only documents (one JSON document per line)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"segments": [{"text": s}]}) for s in make_sentences(400)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_tokenizer(corpus_jsonl):
    from omnitok.tokenizers.text import TextTokenizer

    return TextTokenizer.train([corpus_jsonl], vocab_size=400, progress=False)


def tiny_media_bundle(text_tokenizer, *, image_size: int = 32, image_codes: int = 64,
                      n_q: int = 2, audio_codes: int = 32, ratios: tuple[int, ...] = (8, 4),
                      image: bool = True, audio: bool = True):
    """A TokenizerBundle with tiny random image and audio tokenizers (16 kHz, downsample 4)."""
    from omnitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from omnitok.tokenizers.bundle import TokenizerBundle
    from omnitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

    torch.manual_seed(0)
    image_tok = ImageTokenizer(ImageTokenizerConfig(
        image_size=image_size, downsample=4, codebook_size=image_codes, code_dim=4,
        channels=8)).eval() if image else None
    audio_tok = AudioTokenizer(AudioTokenizerConfig(
        kind="encodec", sample_rate=16000, n_q=n_q, codebook_size=audio_codes, n_filters=4,
        dimension=8, ratios=tuple(ratios), lstm=0)).eval() if audio else None
    return TokenizerBundle.build(text_tokenizer, image_tok, audio_tok)


@pytest.fixture
def one_thread():
    """Small convolutions run fastest (and steadiest on a shared CPU) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
