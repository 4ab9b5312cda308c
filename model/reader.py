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

READER_DIR = "reader"  # a checkpoint's image reader
SPEECH_READER_DIR = "speech_reader"  # and its speech reader
READER_DIRS = {"image": READER_DIR, "audio": SPEECH_READER_DIR}
KINDS = tuple(READER_DIRS)
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
    width: int = 96  # the media encoder's channels
    hidden: int = 128  # the GRU's
    max_pieces: int = 64  # longer captions are cut (scored on their first pieces)
    kind: str = "image"  # what it reads: "image" (a code grid) or "audio" (RVQ frames)
    levels: int = 1  # codebooks: 1 for images, the RVQ levels for audio

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ReaderError(f"a reader reads {' or '.join(KINDS)}, not {self.kind!r}")

    @property
    def bos(self) -> int:
        return self.text_vocab

    @property
    def eos(self) -> int:
        return self.text_vocab + 1


class Reader(nn.Module):
    """log p(caption pieces + <eos> | media codes): a media encoder (the subclass's), then a
    GRU over the caption's pieces."""

    def __init__(self, config: ReaderConfig, codebooks: torch.Tensor) -> None:
        super().__init__()
        shape = (config.levels, config.codebook_size, config.code_dim)
        if tuple(codebooks.reshape(-1, *codebooks.shape[-2:]).shape) != shape:
            raise ReaderError(f"the {config.kind} codebooks are {tuple(codebooks.shape)}, the "
                              f"reader was made for {shape}")
        self.config = config
        self.source: str | None = None  # the folder it was loaded from
        self.register_buffer("codebooks", codebooks.detach().float().reshape(shape).clone(),
                             persistent=False)
        self.embed = nn.Embedding(config.text_vocab + 2, config.hidden)
        self.gru = nn.GRU(config.hidden, config.hidden, batch_first=True)

    def forward(self, media, inputs: torch.Tensor) -> torch.Tensor:
        """media (`media_batch`), inputs (N, T) (<bos> then pieces) -> logits (N, T, vocab + 2)."""
        raise NotImplementedError

    def media_batch(self, codes: Sequence[torch.Tensor]):
        """What `forward` takes for a list of one item's codes each."""
        raise NotImplementedError

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

    def token_log_probs(self, codes: Sequence[torch.Tensor], captions: Sequence[Sequence[int]]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T) log p of each target piece (and <eos>), and the mask of real ones; codes[i]
        is item i's codes ((h, w) for an image, (levels, frames) for audio)."""
        inputs, targets, mask = self.batch(captions)
        device = self.codebooks.device
        logp = self(self.media_batch(codes), inputs.to(device)).float().log_softmax(-1)
        picked = logp.gather(-1, targets.to(device)[..., None])[..., 0]
        return picked, mask.to(device)

    @torch.inference_mode()
    def score(self, codes: Sequence[torch.Tensor], captions: Sequence[Sequence[int]],
              batch_size: int = 256) -> list[float]:
        """log p(caption + <eos> | media) for each (codes[i], captions[i])."""
        out: list[float] = []
        for i in range(0, len(captions), batch_size):
            picked, mask = self.token_log_probs(codes[i:i + batch_size],
                                                captions[i:i + batch_size])
            out += (picked * mask).sum(1).tolist()
        return out


class CaptionReader(Reader):
    """An image's grid of codebook vectors read by three convolutions (`GridReader`); its
    summary starts the GRU and is fed in at every step."""

    def __init__(self, config: ReaderConfig, codebook: torch.Tensor) -> None:
        super().__init__(config, codebook)
        self.grid = GridReader(config.code_dim, config.width)
        self.start = nn.Linear(config.width, config.hidden)
        self.feed = nn.Linear(config.width, config.hidden)
        self.out = nn.Linear(config.hidden, config.text_vocab + 2)

    def media_batch(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(codes, torch.Tensor):
            return codes.to(self.codebooks.device)
        return torch.stack(list(codes)).to(self.codebooks.device)

    def forward(self, codes: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """codes (N, h, w)."""
        summary = self.grid(self.codebooks[0][codes.long()])  # (N, width)
        h0 = torch.tanh(self.start(summary))[None]
        x = self.embed(inputs) + self.feed(summary)[:, None]
        y, _ = self.gru(x, h0)
        return self.out(y)


class SpeechReader(Reader):
    """Speech read as its frames of RVQ codes: each frame the sum of its levels' codebook
    vectors (what the codec decodes), two convolutions over time (the second halves the
    frame rate), a bidirectional GRU; the caption GRU starts from the mean of its states and
    attends over them at every step (dot-product attention on its outputs)."""

    def __init__(self, config: ReaderConfig, codebooks: torch.Tensor) -> None:
        super().__init__(config, codebooks)
        w, h = config.width, config.hidden
        self.convs = nn.ModuleList([nn.Conv1d(config.code_dim, w, 5, padding=2),
                                    nn.Conv1d(w, w, 5, stride=2, padding=2)])
        self.encoder = nn.GRU(w, h // 2, batch_first=True, bidirectional=True)
        self.start = nn.Linear(h, h)
        self.query = nn.Linear(h, h)
        self.mix = nn.Linear(2 * h, h)
        self.out = nn.Linear(h, config.text_vocab + 2)

    def media_batch(self, codes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (N, levels, F) padded with 0 at the end, frames (N,))."""
        frames = torch.tensor([c.shape[-1] for c in codes], dtype=torch.long)
        if (frames < 1).any():
            raise ReaderError("a speech segment without frames cannot be read")
        padded = torch.zeros(len(codes), self.config.levels, int(frames.max()),
                             dtype=torch.long)
        for i, c in enumerate(codes):
            padded[i, :, :c.shape[-1]] = c[:self.config.levels]
        return padded.to(self.codebooks.device), frames

    def encode(self, codes: torch.Tensor, frames: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (N, F', hidden), mask (N, F') of real ones) for codes (N, levels, F)."""
        x = sum(self.codebooks[k][codes[:, k].long()] for k in range(codes.shape[1]))
        lengths = frames
        for conv in self.convs:  # padding is zeroed before each, as a lone clip's would be
            keep = torch.arange(x.shape[1], device=x.device)[None] < lengths.to(x.device)[:, None]
            x = F.gelu(conv((x * keep[..., None]).transpose(1, 2))).transpose(1, 2)
            lengths = (lengths - 1) // conv.stride[0] + 1
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        states, _ = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                     total_length=x.shape[1])
        mask = torch.arange(x.shape[1], device=x.device)[None] < lengths.to(x.device)[:, None]
        return states, mask

    def forward(self, media: tuple[torch.Tensor, torch.Tensor], inputs: torch.Tensor
                ) -> torch.Tensor:
        states, mask = self.encode(*media)
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        y, _ = self.gru(self.embed(inputs), torch.tanh(self.start(mean))[None])
        weights = torch.einsum("nth,nfh->ntf", self.query(y), states)
        weights = weights.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        context = torch.einsum("ntf,nfh->nth", weights, states)
        return self.out(torch.tanh(self.mix(torch.cat([y, context], -1))))


def make_reader(config: ReaderConfig, codebooks: torch.Tensor) -> Reader:
    """The reader of `config.kind`."""
    return (CaptionReader if config.kind == "image" else SpeechReader)(config, codebooks)


def fit(reader: Reader, codes: Sequence[torch.Tensor], captions: list[list[int]], *,
        epochs: int = 20, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
        on_step: Callable[[float], None] | None = None) -> float:
    """Train `reader` on (codes[i], captions[i]) pairs, AdamW with a cosine learning rate;
    returns the last epoch's mean loss per piece."""
    if not captions:
        raise ReaderError(f"no {reader.config.kind}-caption pairs to train on")
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
            picked, mask = reader.token_log_probs([codes[r] for r in rows],
                                                  [captions[r] for r in rows])
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


def save_reader(folder: str | os.PathLike, reader: Reader, tokens: dict[str, str],
                extra: dict | None = None) -> Path:
    """folder/config.json (the config, the tokenizers' fingerprint) + model.safetensors."""
    config = {"format": FORMAT, "config": asdict(reader.config), "tokenizers": tokens,
              **(extra or {})}
    return save_module(folder, reader, config)


def reader_codebooks(tokenizers, kind: str) -> torch.Tensor | None:
    """The codebooks a reader of `kind` reads with: the image tokenizer's (1, size, dim) or
    the audio tokenizer's RVQ levels (levels, size, dim); None where the bundle lacks it."""
    if kind == "image":
        image = tokenizers.image
        return None if image is None else image.codebook[None]
    audio = tokenizers.audio
    return None if audio is None else torch.stack([b.detach() for b in audio.codebooks()])


def reader_kind(folder: str | os.PathLike) -> str:
    """What the reader in `folder` reads ("image" or "audio"), from its config."""
    raw = read_config(Path(folder), ReaderError)
    if raw.get("format") != FORMAT:
        raise ReaderError(f"{Path(folder) / 'config.json'}: not a reader (format "
                          f"{raw.get('format')!r})")
    kind = raw.get("config", {}).get("kind", "image") if isinstance(raw.get("config"),
                                                                      dict) else None
    if kind not in KINDS:
        raise ReaderError(f"{Path(folder) / 'config.json'}: bad reader config (kind {kind!r})")
    return kind


def load_reader(folder: str | os.PathLike, tokenizers) -> Reader:
    """The reader in `folder`, checked against the tokenizers it is to read for."""
    folder = Path(folder)
    kind = reader_kind(folder)
    raw = read_config(folder, ReaderError)
    try:
        config = ReaderConfig(**raw["config"])
    except (KeyError, TypeError) as e:
        raise ReaderError(f"{folder / 'config.json'}: bad reader config ({e})") from None
    codebooks = reader_codebooks(tokenizers, kind)
    if codebooks is None or tokenizers.text is None:
        raise ReaderError(f"{folder}: a reader of {kind} needs the checkpoint's {kind} and "
                          f"text tokenizers, and this checkpoint lacks one")
    if raw.get("tokenizers") != fingerprint(codebooks, tokenizers.text.model_proto):
        raise ReaderError(f"{folder}: this reader was trained with other tokenizers than the "
                          f"checkpoint's (its {kind} codebooks or text model differ)")
    reader = make_reader(config, codebooks)
    load_module_state(folder, reader, ReaderError)
    reader.source = str(folder)  # where it was loaded from: recorded with the answers
    return reader.eval()


def checkpoint_readers(folder: str | os.PathLike, tokenizers) -> dict[str, Reader]:
    """The readers of a checkpoint by kind: its `reader/` (images) and `speech_reader/`
    folders, where it has them and the tokenizers they read with."""
    found = {}
    for kind, name in READER_DIRS.items():
        path = Path(folder) / name
        if (path.is_dir() and reader_codebooks(tokenizers, kind) is not None
                and tokenizers.text is not None):
            found[kind] = load_reader(path, tokenizers)
    return found


def pick_readers(spec: str | os.PathLike | Sequence[str | os.PathLike] | None,
                 folder: str | os.PathLike | None, tokenizers) -> dict[str, Reader]:
    """`--reader`, one or more of: "auto" (the checkpoint `folder`'s readers), "none" (alone:
    no reader), or a reader folder (which must exist and match the tokenizers); a later one
    replaces an earlier one of the same kind."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) or spec is None else list(spec)
    specs = [str(s) for s in specs if s is not None]
    if "none" in specs:
        if len(specs) > 1:
            raise ReaderError("--reader none goes alone (it turns every reader off)")
        return {}
    readers: dict[str, Reader] = {}
    for s in specs:
        if s == "auto":
            if folder is not None:
                readers.update(checkpoint_readers(folder, tokenizers))
        else:
            reader = load_reader(s, tokenizers)
            readers[reader.config.kind] = reader
    return readers
