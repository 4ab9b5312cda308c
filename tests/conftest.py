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
