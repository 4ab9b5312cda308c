"""How much of each attribute an image tokenizer's codes hold, for readers of three kinds
(`omnitok data probe`).

The images of a demo manifest are encoded by the tokenizer, and three small classifiers learn
shape, colour and background from the code grids of the training lines, then are scored on
the held-out lines (seen and unseen attribute combinations apart):

- `bag`: a linear reader of how often each code occurs: all a reader gets that ignores where
  the codes are.
- `cnn`: three 3x3 convolutions over learned code embeddings, max-pooled: the layout, with
  each code's meaning learned from the labels (so separately for each pair of colours).
- `cnn-codebook`: the same over the tokenizer's own codebook vectors, frozen: the layout
  and the geometry the codebook shares between colours.

A tokenizer whose codes keep an attribute for some reader but not for the bag keeps it in
the layout; one whose `cnn` falls behind `cnn-codebook` on unseen combinations gives each
pair of colours its own codes for an outline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omnitok import OmnitokError, atomic_write_text
from omnitok.demo.world import COLOURS, SHAPES
from omnitok.model.image_positions import GridReader

ATTRIBUTES = {"shape": list(SHAPES), "colour": list(COLOURS), "background": list(COLOURS)}
READERS = ("bag", "cnn", "cnn-codebook")


class ProbeError(OmnitokError):
    """A manifest or tokenizer the probe cannot use."""


@dataclass
class CodeSet:
    """Code grids (N, h, w), their attribute labels {name: (N,)} and, held out, unseen (N,)."""

    codes: torch.Tensor
    labels: dict[str, torch.Tensor]
    unseen: torch.Tensor


class Bag(nn.Module):
    def __init__(self, n_codes: int, n_out: int) -> None:
        super().__init__()
        self.n_codes = n_codes
        self.head = nn.Linear(n_codes, n_out)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        counts = F.one_hot(codes.flatten(1), self.n_codes).float().mean(1)
        return self.head(counts)


class GridCNN(nn.Module):
    """Code embeddings (learned, or a frozen codebook), three 3x3 convolutions, max-pool."""

    def __init__(self, n_codes: int, n_out: int, codebook: torch.Tensor | None = None,
                 width: int = 64) -> None:
        super().__init__()
        if codebook is None:
            self.embed = nn.Embedding(n_codes, 32)
        else:
            self.embed = nn.Embedding.from_pretrained(codebook.detach().float().clone())
        self.reader = GridReader(self.embed.embedding_dim, width)  # the model's cnn summary
        self.head = nn.Linear(width, n_out)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.head(self.reader(self.embed(codes)))


def make_reader(kind: str, codebook: torch.Tensor, n_out: int) -> nn.Module:
    n_codes = len(codebook)
    if kind == "bag":
        return Bag(n_codes, n_out)
    return GridCNN(n_codes, n_out, codebook if kind == "cnn-codebook" else None)


def fit_reader(reader: nn.Module, train: CodeSet, heads: dict[str, int], *, epochs: int,
               batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
               on_batch: Callable[[], None] | None = None) -> nn.Module:
    """Train `reader` (its outputs: the heads' logits side by side) on `train`'s labels."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in reader.parameters() if p.requires_grad], lr=lr)
    reader.train()
    for _ in range(epochs):
        order = torch.randperm(len(train.codes), generator=g)
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            logits = reader(train.codes[rows]).split(list(heads.values()), dim=1)
            loss = sum(F.cross_entropy(out, train.labels[name][rows])
                       for out, name in zip(logits, heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_batch is not None:
                on_batch()
    return reader.eval()


@torch.no_grad()
def score_reader(reader: nn.Module, test: CodeSet, heads: dict[str, int]
                 ) -> dict[str, dict[str, float]]:
    """{split: {attribute: accuracy}} on `test` (splits `seen` and `unseen`)."""
    logits = reader(test.codes).split(list(heads.values()), dim=1)
    out: dict[str, dict[str, float]] = {}
    for split, rows in (("seen", ~test.unseen), ("unseen", test.unseen)):
        if rows.any():
            out[split] = {name: float((z[rows].argmax(1) == test.labels[name][rows])
                                      .float().mean()) for z, name in zip(logits, heads)}
    return out


def manifest_images(manifest: Path, limit: int) -> list[tuple[Path, dict, bool]]:
    """(image path, attrs, unseen) of each sample of a demo manifest, once per sample."""
    out, seen = [], set()
    try:
        lines = manifest.read_text().splitlines()
    except OSError as e:
        raise ProbeError(f"{manifest}: cannot read ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
            sample, attrs = doc["sample"], doc["attrs"]
            image = next(s["image"] for s in doc["segments"] if "image" in s)
        except StopIteration:
            continue
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ProbeError(f"{manifest}:{number}: not a demo-world line") from None
        if sample in seen:
            continue
        seen.add(sample)
        out.append((manifest.parent / image, attrs, doc.get("split") == "heldout-unseen"))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ProbeError(f"{manifest}: no line with an image")
    return out


def encode_images(tokenizer, items: list[tuple[Path, dict, bool]], size: int,
                  on_batch: Callable[[int], None] | None = None) -> CodeSet:
    from omnitok.tokenizers.image_io import load_image

    codes = []
    for i in range(0, len(items), 256):
        chunk = items[i:i + 256]
        codes.append(tokenizer.encode(torch.stack([load_image(p, size) for p, _, _ in chunk])))
        if on_batch is not None:
            on_batch(len(chunk))
    labels = {name: torch.tensor([values.index(a[name]) for _, a, _ in items])
              for name, values in ATTRIBUTES.items()}
    return CodeSet(torch.cat(codes), labels, torch.tensor([u for _, _, u in items]))


def probe_command(*, tokenizer: Path = Path("default"),
                  train: Path = Path("data/demo/train.jsonl"),
                  heldout: Path = Path("data/demo/heldout.jsonl"), n_train: int = 12000,
                  epochs: int = 6, seed: int = 0, out: Path | None = None,
                  progress: bool = True) -> None:
    """How much of each attribute a tokenizer's image codes hold, for three readers.

    Encodes the demo manifests' images, trains a bag-of-codes reader, a CNN over learned code
    embeddings and a CNN over the frozen codebook vectors on the training samples, and
    scores them on the held-out ones (seen / unseen attribute combinations).

    Args:
        tokenizer: a tokenizer folder or checkpoint with an image tokenizer.
        train: demo-world manifest the readers learn from.
        heldout: demo-world manifest they are scored on.
        n_train: training samples (images) to take (0: all).
        epochs: passes over them per reader.
        seed: of the readers' initialisation and order.
        out: also write the scores as JSON to this file.
        progress: show progress bars.
    """
    from omnitok.tokenizers.bundle import TokenizerBundle

    bundle = TokenizerBundle.load(tokenizer)
    if bundle.image is None:
        raise ProbeError(f"{tokenizer}: no image tokenizer")
    image, size = bundle.image, bundle.image.config.image_size
    items = {"train": manifest_images(train, n_train), "heldout": manifest_images(heldout, 0)}
    sets = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("encode", total=sum(len(v) for v in items.values()))
        for name, rows in items.items():
            sets[name] = encode_images(image, rows, size, lambda n: bar.advance(task, n))
    heads = {name: len(values) for name, values in ATTRIBUTES.items()}
    steps = epochs * -(-len(sets["train"].codes) // 128)
    scores = {}
    for kind in READERS:
        torch.manual_seed(seed)
        reader = make_reader(kind, image.codebook, sum(heads.values()))
        with progress_bar(progress) as bar:
            task = bar.add_task(kind, total=steps)
            fit_reader(reader, sets["train"], heads, epochs=epochs, seed=seed,
                       on_batch=functools.partial(bar.advance, task))
        scores[kind] = score_reader(reader, sets["heldout"], heads)
    print(format_probe(scores, len(sets["train"].codes), tuple(sets["train"].codes.shape[1:])))
    if out is not None:
        atomic_write_text(out, json.dumps(scores, indent=1) + "\n")


def progress_bar(show: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("probe {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=not show or not console.is_terminal)


def format_probe(scores: dict[str, dict[str, dict[str, float]]], n_train: int,
                 grid: tuple[int, int]) -> str:
    names = list(ATTRIBUTES)
    lines = [f"readers of {grid[0]}x{grid[1]} code grids, trained on {n_train:,} images; "
             "held-out accuracy, seen / unseen combinations",
             f"{'reader':<14}" + "".join(f"{n:>18}" for n in names)]
    for kind, splits in scores.items():
        cells = [" / ".join(f"{splits[s][n]:6.1%}" for s in ("seen", "unseen") if s in splits)
                 for n in names]
        lines.append(f"{kind:<14}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)
