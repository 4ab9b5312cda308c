"""The caption reader: a small model beside the transformer that reads an image's codes and
scores captions, log p(caption | image) (`omnitok reader train`).

`--rerank` keeps the candidate image the reader finds likeliest to show the prompt's text,
where the checkpoint has a reader; without one, the transformer reads its candidates back
itself (generate/rerank.py). The transformer reads real images well but is a lenient judge
of its own drawings: it learned to draw and to read from the same codes, so a blob drawn
for "hexagon" also reads as one. The reader never draws; it learns only to read, from the
corpus's image-caption pairs, many passes over them in a couple of minutes.

It reads the image's grid of codebook vectors (the image tokenizer's own, frozen) with three
convolutions (`GridReader`, as the transformer's `--image-summary cnn`), then a GRU writes
the caption in the text tokenizer's pieces, the image's summary fed in at every step. A
reader is tied to the tokenizers it was trained with: its config records a fingerprint of
the codebook and of the text model, and loading it beside other tokenizers is an error.

A reader lives in a checkpoint's `reader/` folder (config.json + model.safetensors); `omnitok
model export` carries it along.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnitok import OmnitokError
from omnitok.model.image_positions import GridReader
from omnitok.tokenizers.weights import load_module_state, read_config, save_module

READER_DIR = "reader"
FORMAT = "omnitok-reader"


class ReaderError(OmnitokError):
    """A reader folder that is missing, corrupt, or does not match the tokenizers."""


def fingerprint(codebook: torch.Tensor, text_model: bytes) -> dict[str, str]:
    """What ties a reader to its tokenizers: hashes of the image codebook and text model."""
    book = codebook.detach().float().cpu().contiguous().numpy().tobytes()
    return {"codebook": hashlib.sha256(book).hexdigest()[:16],
            "text_model": hashlib.sha256(text_model).hexdigest()[:16]}


@dataclass
class ReaderConfig:
    text_vocab: int  # text tokenizer pieces; <bos> and <eos> come after them
    codebook_size: int
    code_dim: int
    width: int = 96  # the grid reader's channels
    hidden: int = 128  # the GRU's
    max_pieces: int = 64  # longer captions are cut (scored on their first pieces)

    @property
    def bos(self) -> int:
        return self.text_vocab

    @property
    def eos(self) -> int:
        return self.text_vocab + 1


class CaptionReader(nn.Module):
    """log p(caption pieces + <eos> | image codes)."""

    def __init__(self, config: ReaderConfig, codebook: torch.Tensor) -> None:
        super().__init__()
        if tuple(codebook.shape) != (config.codebook_size, config.code_dim):
            raise ReaderError(f"the image codebook is {tuple(codebook.shape)}, the reader "
                              f"was made for ({config.codebook_size}, {config.code_dim})")
        self.config = config
        self.source: str | None = None
        self.register_buffer("codebook", codebook.detach().float().clone(), persistent=False)
        self.grid = GridReader(config.code_dim, config.width)
        self.start = nn.Linear(config.width, config.hidden)
        self.feed = nn.Linear(config.width, config.hidden)
        self.embed = nn.Embedding(config.text_vocab + 2, config.hidden)
        self.gru = nn.GRU(config.hidden, config.hidden, batch_first=True)
        self.out = nn.Linear(config.hidden, config.text_vocab + 2)

    def forward(self, codes: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """codes (N, h, w), inputs (N, T) (<bos> then pieces) -> logits (N, T, vocab + 2)."""
        summary = self.grid(self.codebook[codes.long()])  # (N, width)
        h0 = torch.tanh(self.start(summary))[None]
        x = self.embed(inputs) + self.feed(summary)[:, None]
        y, _ = self.gru(x, h0)
        return self.out(y)

    def batch(self, captions: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
        """(inputs, targets, mask) for captions of pieces: <bos> + pieces -> pieces + <eos>."""
        cut = [list(c)[:self.config.max_pieces] for c in captions]
        width = max(len(c) for c in cut) + 1
        inputs = torch.full((len(cut), width), self.config.eos, dtype=torch.long)
        targets = torch.full((len(cut), width), self.config.eos, dtype=torch.long)
        mask = torch.zeros(len(cut), width, dtype=torch.bool)
        for i, c in enumerate(cut):
            inputs[i, 0] = self.config.bos
            inputs[i, 1:len(c) + 1] = torch.tensor(c, dtype=torch.long)
            targets[i, :len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, :len(c) + 1] = True
        return inputs, targets, mask

    def token_log_probs(self, codes: torch.Tensor, captions: Sequence[Sequence[int]]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T) log p of each target piece (and <eos>), and the mask of real ones."""
        inputs, targets, mask = self.batch(captions)
        device = self.codebook.device
        logp = self(codes.to(device), inputs.to(device)).float().log_softmax(-1)
        picked = logp.gather(-1, targets.to(device)[..., None])[..., 0]
        return picked, mask.to(device)

    @torch.inference_mode()
    def score(self, codes: torch.Tensor, captions: Sequence[Sequence[int]],
              batch_size: int = 256) -> list[float]:
        """log p(caption + <eos> | image) for each (codes[i], captions[i])."""
        out: list[float] = []
        for i in range(0, len(captions), batch_size):
            picked, mask = self.token_log_probs(codes[i:i + batch_size],
                                                captions[i:i + batch_size])
            out += (picked * mask).sum(1).tolist()
        return out


def fit(reader: CaptionReader, codes: torch.Tensor, captions: list[list[int]], *,
        epochs: int = 20, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
        on_step: Callable[[float], None] | None = None) -> float:
    """Train `reader` on (codes[i], captions[i]) pairs, AdamW with a cosine learning rate;
    returns the last epoch's mean loss per piece."""
    if not captions:
        raise ReaderError("no image-caption pairs to train on")
    g = torch.Generator().manual_seed(seed)
    params = [p for p in reader.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    per_epoch = math.ceil(len(captions) / batch_size)
    total, step, last = epochs * per_epoch, 0, float("nan")
    reader.train()
    for _ in range(epochs):
        order = torch.randperm(len(captions), generator=g).tolist()
        losses = []
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            picked, mask = reader.token_log_probs(codes[rows], [captions[r] for r in rows])
            loss = -(picked * mask).sum() / mask.sum()
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            if on_step is not None:
                on_step(loss.item())
        last = sum(losses) / len(losses)
    reader.eval()
    return last


def save_reader(folder: str | os.PathLike, reader: CaptionReader, tokens: dict[str, str],
                extra: dict | None = None) -> Path:
    """folder/config.json (the config, the tokenizers' fingerprint) + model.safetensors."""
    config = {"format": FORMAT, "config": asdict(reader.config), "tokenizers": tokens,
              **(extra or {})}
    return save_module(folder, reader, config)


def load_reader(folder: str | os.PathLike, codebook: torch.Tensor, text_model: bytes
                ) -> CaptionReader:
    """The reader in `folder`, checked against the tokenizers it is to read for."""
    folder = Path(folder)
    raw = read_config(folder, ReaderError)
    if raw.get("format") != FORMAT:
        raise ReaderError(f"{folder / 'config.json'}: not a caption reader (format "
                          f"{raw.get('format')!r})")
    try:
        config = ReaderConfig(**raw["config"])
    except (KeyError, TypeError) as e:
        raise ReaderError(f"{folder / 'config.json'}: bad reader config ({e})") from None
    if raw.get("tokenizers") != fingerprint(codebook, text_model):
        raise ReaderError(f"{folder}: this reader was trained with other tokenizers than the "
                          f"checkpoint's (its codebook or text model differs)")
    reader = CaptionReader(config, codebook)
    load_module_state(folder, reader, ReaderError)
    reader.source = str(folder)  # where it was loaded from: recorded with the answers
    return reader.eval()


def checkpoint_reader(folder: str | os.PathLike, tokenizers) -> CaptionReader | None:
    """The reader of a checkpoint (its `reader/` folder), or None where it has none or the
    checkpoint has no image and text tokenizers."""
    path = Path(folder) / READER_DIR
    if not path.is_dir() or tokenizers.image is None or tokenizers.text is None:
        return None
    return load_reader(path, tokenizers.image.codebook, tokenizers.text.model_proto)


def pick_reader(spec: str | os.PathLike | None, folder: str | os.PathLike | None, tokenizers
                ) -> CaptionReader | None:
    """`--reader`: "auto" (the checkpoint `folder`'s reader/ where it has one), "none", or a
    reader folder (which must exist and match the tokenizers)."""
    if spec is None or str(spec) == "none":
        return None
    if str(spec) == "auto":
        return None if folder is None else checkpoint_reader(folder, tokenizers)
    if tokenizers.image is None or tokenizers.text is None:
        raise ReaderError("--reader: a caption reader needs the checkpoint's image and text "
                          "tokenizers, and this checkpoint lacks one")
    return load_reader(spec, tokenizers.image.codebook, tokenizers.text.model_proto)
