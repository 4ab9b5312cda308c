"""Small corpora for the training-data tests: a demo world with tiny tokenizers, and a
generated corpus of already encoded documents (no media decoding)."""

from __future__ import annotations

import random

import pytest
import torch

from omnitok.demo.world import build_world
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment
from omnitok.train.encode import token_document
from omnitok.train.shards import TokenShards, write_shards

from ..conftest import tiny_media_bundle

N_Q = 2


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """3 samples of the shapes-and-speech world: 21 documents in train.jsonl."""
    out = tmp_path_factory.mktemp("world")
    build_world(out, n_train=3, n_heldout=0, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tok(tmp_path_factory, text_tokenizer):
    """A tokenizer folder: 8x8 image codes of 64, 2 RVQ levels of 32 at 100 frames/s."""
    folder = tmp_path_factory.mktemp("tok")
    tiny_media_bundle(text_tokenizer, n_q=N_Q, ratios=(8, 5, 4)).save(folder)
    return folder


def random_document(rng: random.Random, words: list[str]) -> Document:
    """1-4 segments: text of 1-30 words, images of 2x2 .. 8x8 codes, audio of 1-150 frames."""
    segments = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("text", "image", "audio"))
        if kind == "text":
            segments.append(TextSegment(" ".join(rng.choices(words, k=rng.randint(1, 30)))))
        elif kind == "image":
            side = rng.randint(2, 8)
            segments.append(ImageSegment(torch.randint(0, 64, (side, side))))
        else:
            segments.append(AudioSegment(torch.randint(0, 32, (N_Q, rng.randint(1, 150)))))
    return Document(segments)


@pytest.fixture(scope="session")
def codec(tok):
    return TokenizerBundle.load(tok).codec()


@pytest.fixture(scope="session")
def generated(tmp_path_factory, codec):
    """A finished shard folder of 600 random documents in 4 shards, and their documents."""
    rng, words = random.Random(0), "a red circle says hello on blue ground".split()
    torch.manual_seed(0)
    docs = [token_document(codec, random_document(rng, words), line=i + 1) for i in range(600)]
    folder = tmp_path_factory.mktemp("generated")
    write_shards(folder, codec.vocab, docs, docs_per_shard=160)
    return TokenShards(folder), docs


def _train_argv(data, out, *extra, steps: int = 12, batch: int = 4, seq_len: int = 128,
               lr: float = 3e-3) -> list[str]:
    """`omnitok train` arguments for a quick debug-preset run: one thread, constant learning
    rate after 2 warmup steps (so --max-steps does not change the curve), a row per step."""
    return ["train", "--data", str(data), "--out", str(out), "--model", "debug",
            "--max-steps", str(steps), "--batch-size", str(batch), "--seq-len", str(seq_len),
            "--lr", str(lr), "--min-lr", str(lr), "--warmup-steps", "2", "--log-every", "1",
            "--checkpoint-every", "5", "--threads", "1", "--no-progress", *extra]


def _losses(run) -> dict[int, float]:
    """Step -> weighted loss, from a run's metrics.csv."""
    from omnitok.train.logs import read_log

    return {int(r["step"]): r["loss"] for r in read_log(run / "metrics.csv")}


@pytest.fixture(scope="session")
def train_argv():
    """The function `_train_argv` (argument lists for quick `omnitok train` runs)."""
    return _train_argv


@pytest.fixture(scope="session")
def losses():
    """The function `_losses` (step -> loss of a run folder)."""
    return _losses


@pytest.fixture(scope="session")
def train_data(generated):
    """The generated shard folder."""
    return generated[0].folder


@pytest.fixture(scope="session")
def baseline(train_data, tmp_path_factory, train_argv):
    """An uninterrupted 12-step run, 1 process, 4 rows per step (checkpoints at 5, 10, 12)."""
    from omnitok.cli import main

    out = tmp_path_factory.mktemp("runs") / "baseline"
    assert main(train_argv(train_data, out)) == 0
    return out
