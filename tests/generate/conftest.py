"""Tiny any-to-any checkpoints (random weights and tokenizers) and a random-logit model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from omnitok.model.checkpoint import save_checkpoint
from omnitok.model.config import ImageNeighbours, ModelArgs
from omnitok.model.image_positions import image_positions_for
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.vocab import Vocab

from ..conftest import tiny_media_bundle


def tiny_bundle(text_tokenizer, *, image: bool = True, audio: bool = True,
                pattern: str = "flatten") -> TokenizerBundle:
    """Random tokenizers: 16x16 images as a 4x4 grid of 32 codes; 2-level audio, 16 kHz."""
    bundle = tiny_media_bundle(text_tokenizer, image_size=16, image_codes=32, audio_codes=16,
                               image=image, audio=audio)
    if audio and pattern != "flatten":
        spec = dataclasses.replace(bundle.vocab.audio, pattern=pattern)
        bundle = TokenizerBundle(dataclasses.replace(bundle.vocab, audio=spec), text_tokenizer,
                                 bundle.image, bundle.audio)
    return bundle


def tiny_checkpoint(folder, bundle: TokenizerBundle, max_seq_len: int = 256,
                    image_positions: bool = False, image_neighbours: bool = False,
                    summary: str = "pool"):
    """A random debug model; with `image_positions`, random row and column embeddings too;
    with `image_neighbours`, a random map of each code's neighbours (and of the `summary`
    of each image) as well."""
    torch.manual_seed(0)
    layout = image_positions_for(bundle.vocab) if image_positions else None
    near = (ImageNeighbours(bundle.image.codebook.shape[1], 32, summary, 16)
            if image_neighbours else None)
    args = ModelArgs.from_name("debug", vocab_size=bundle.vocab.padded_size,
                               max_seq_len=max_seq_len, image_positions=layout,
                               image_neighbours=near)
    model = Transformer(args).eval()
    if image_positions:
        with torch.no_grad():
            model.image_rows.weight[1:].normal_()
            model.image_cols.weight[1:].normal_()
            if image_neighbours:
                model.image_codebook.copy_(bundle.image.codebook)
                model.image_neighbours[2].weight.normal_(std=0.05)
                model.image_summary.weight.normal_(std=0.05)
    return save_checkpoint(folder, model, bundle)


@pytest.fixture(scope="session")
def any_ckpt(tmp_path_factory, text_tokenizer):
    """Text, image and audio (flatten order) in one checkpoint."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "any", tiny_bundle(text_tokenizer))


@pytest.fixture(scope="session")
def grid_ckpt(tmp_path_factory, text_tokenizer):
    """Like any_ckpt, with 2-D image positions (row and column embeddings)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "grid", tiny_bundle(text_tokenizer),
                           image_positions=True)


@pytest.fixture(scope="session")
def near_ckpt(tmp_path_factory, text_tokenizer):
    """Like grid_ckpt, with each image code's neighbours embedded as well."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "near", tiny_bundle(text_tokenizer),
                           image_positions=True, image_neighbours=True)


@pytest.fixture(scope="session")
def cnn_ckpt(tmp_path_factory, text_tokenizer):
    """Like near_ckpt, with the convolutional summary of each image."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn", tiny_bundle(text_tokenizer),
                           image_positions=True, image_neighbours=True, summary="cnn")


@pytest.fixture(scope="session")
def delay_ckpt(tmp_path_factory, text_tokenizer):
    """Like any_ckpt, with audio in the delay order."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "delay",
                           tiny_bundle(text_tokenizer, pattern="delay"))


@pytest.fixture(scope="session")
def text_ckpt(tmp_path_factory, text_tokenizer):
    """Text only: no image or audio tokenizer (the vocabulary has no media ranges)."""
    bundle = TokenizerBundle(Vocab(text_size=text_tokenizer.vocab_size), text_tokenizer)
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "text", bundle)


class RandomLogits(nn.Module):
    """A stand-in model whose logits are random: exercises every branch of the grammar."""

    def __init__(self, vocab_size: int, max_seq_len: int = 4096, seed: int = 0) -> None:
        super().__init__()
        self.args = ModelArgs(vocab_size=vocab_size, max_seq_len=max_seq_len)
        self.tok_embeddings = nn.Embedding(1, 1)
        self.g = torch.Generator().manual_seed(seed)
        self.rows = 0

    def setup_cache(self, batch_size: int, max_seq_len: int | None = None) -> None:
        self.rows = batch_size

    def keep_cache_rows(self, rows: torch.Tensor) -> None:
        self.rows = len(rows)

    def clear_cache(self) -> None:
        self.rows = 0

    def forward(self, idx: torch.Tensor, input_pos=None, kv_len=None,
                image_pos=None, neighbours=None, summary=None) -> torch.Tensor:
        assert idx.shape[0] == self.rows
        return 4 * torch.randn(*idx.shape, self.args.vocab_size, generator=self.g)
