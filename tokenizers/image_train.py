"""Training and evaluating the VQ image tokenizer; `omnitok tokenizer train image`.

All training images are decoded once into one uint8 tensor in memory (N x 3 x size x size
bytes: 12 KiB per 64 x 64 image). Each step draws a random batch (with random horizontal flips)
and minimises L1 + MSE reconstruction (+ `edge_weight` x L1 of image gradients) + codebook +
commitment losses under bf16 autocast. The learning rate warms up, then follows a cosine to
10% over the budget (steps, or minutes of wall-clock time). With a step budget and no time
budget, training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from omnitok import native_bf16
from omnitok.tokenizers.image import (
    ImageTokenizer,
    ImageTokenizerConfig,
    ImageTokenizerError,
    code_stats,
    psnr,
)
from omnitok.tokenizers.image_io import decode_images, find_images

Norm = Literal["group", "none"]

WARMUP_STEPS = 50
LOG_EVERY = 25


@dataclass
class TrainStats:
    """What a training run did; psnr/used/perplexity are over the last logging window."""

    steps: int
    seconds: float
    threads: int
    images: int
    loss: float
    psnr: float
    used: int
    perplexity: float
    restarted: int

    def summary(self) -> str:
        return (f"{self.steps} steps in {self.seconds / 60:.1f} min ({self.threads} threads), "
                f"{self.images:,} images: train PSNR {self.psnr:.1f} dB, "
                f"{self.used} codes used, perplexity {self.perplexity:.0f}")


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` torch CPU threads (None: unchanged); restore the old count after."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ImageTokenizerError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def as_uint8_images(images: Tensor | list, size: int) -> Tensor:
    """A (N, 3, size, size) uint8 tensor from uint8/float [0, 1] tensors or image paths."""
    if isinstance(images, Tensor):
        if images.dtype.is_floating_point:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ImageTokenizerError(f"training images must be (N, 3, {size}, {size}) uint8 or "
                                      f"float, got {images.dtype} {tuple(images.shape)}")
        return images
    data, failed = decode_images([Path(p) for p in images], size)
    if failed:
        raise ImageTokenizerError(f"{len(failed)} unreadable images, first: {failed[0][1]}")
    return data


def recon_loss(recon: Tensor, target: Tensor, edge_weight: float = 0.0) -> Tensor:
    """L1 + MSE (+ edge_weight x L1 of horizontal and vertical differences), in [0, 1] units."""
    diff = recon.float() - target
    loss = diff.abs().mean() + diff.pow(2).mean()
    if edge_weight:
        dx = diff[..., :, 1:] - diff[..., :, :-1]
        dy = diff[..., 1:, :] - diff[..., :-1, :]
        loss = loss + edge_weight * (dx.abs().mean() + dy.abs().mean())
    return loss


def lr_at(progress: float, step: int, lr: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine from lr to lr/10 as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return warm * lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_image_tokenizer(
    images: Tensor | list,
    config: ImageTokenizerConfig | None = None,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = None,
    bf16: bool | None = None,
    edge_weight: float = 0.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[ImageTokenizer, TrainStats]:
    """Train a tokenizer on `images` for `steps` and/or `minutes` (whichever ends first).

    `images`: (N, 3, S, S) uint8 or [0, 1] float tensor (S = config.image_size) or a list of
    image paths (decoded with `load_image`). Progress goes to stderr unless `progress=False`.
    Returns the model (eval mode, on `device`) and the stats of the run. `bf16` (autocast)
    defaults to whether the device has fast bfloat16 (`omnitok.native_bf16`).
    """
    config = config or ImageTokenizerConfig()
    if steps is None and minutes is None:
        raise ImageTokenizerError("give a training budget: steps and/or minutes")
    if (steps is not None and steps < 1) or (minutes is not None and minutes <= 0) \
            or batch_size < 1 or lr <= 0:
        raise ImageTokenizerError("steps, minutes, batch_size and lr must be positive")
    data = as_uint8_images(images, config.image_size)
    if len(data) == 0:
        raise ImageTokenizerError("no training images")
    with num_threads(threads) as n_threads:
        torch.manual_seed(seed)
        model = ImageTokenizer(config).to(device)
        bf16 = native_bf16(device) if bf16 is None else bf16
        run = _Run(model, data, batch_size, lr, seed, bf16, edge_weight, steps, minutes)
        run.loop(Console(stderr=True) if progress else None)
    return model.eval(), run.stats(n_threads)


class _Run:
    """The state of one training run (optimizer, sampler, budget, running statistics)."""

    def __init__(self, model: ImageTokenizer, data: Tensor, batch_size: int, lr: float,
                 seed: int, bf16: bool, edge_weight: float, steps: int | None,
                 minutes: float | None) -> None:
        self.model, self.data, self.batch_size, self.lr = model, data, batch_size, lr
        self.bf16, self.edge_weight = bf16, edge_weight
        self.max_steps, self.seconds = steps, None if minutes is None else minutes * 60
        self.device = next(model.parameters()).device
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99),
                                     weight_decay=0.0)
        self.step, self.start, self.loss = 0, time.perf_counter(), float("nan")
        self.window_codes: list[Tensor] = []
        self.window_psnr: list[float] = []
        self.last = {"psnr": float("nan"), "used": 0, "perplexity": 0.0}

    def progress(self) -> float:
        done = [self.step / self.max_steps] if self.max_steps else []
        if self.seconds:
            done.append((time.perf_counter() - self.start) / self.seconds)
        return max(done)

    def batch(self) -> Tensor:
        idx = torch.randint(len(self.data), (self.batch_size,), generator=self.gen)
        x = self.data[idx].to(self.device).float() / 255  # (B, 3, S, S)
        flip = torch.rand(self.batch_size, generator=self.gen) < 0.5
        return torch.where(flip.to(self.device)[:, None, None, None], x.flip(-1), x)

    def train_step(self) -> None:
        self.model.train()
        x = self.batch()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.progress(), self.step, self.lr)
        autocast = torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            recon, codes, aux = self.model(x)
        loss = recon_loss(recon, x, self.edge_weight) + aux["codebook"] + aux["commit"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step, self.loss = self.step + 1, float(loss.detach())
        self.window_codes.append(codes.detach().cpu())
        self.window_psnr.append(psnr(recon.detach(), x))

    def log(self) -> None:
        stats = code_stats(torch.cat(self.window_codes), self.model.codebook_size)
        self.last = {"psnr": sum(self.window_psnr) / len(self.window_psnr),
                     "used": stats["used"], "perplexity": stats["perplexity"]}
        self.window_codes, self.window_psnr = [], []

    def loop(self, console: Console | None) -> None:
        quiet = console is None or not console.is_terminal
        columns = (TextColumn("image tokenizer"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=quiet) as bar:
            task = bar.add_task("train", total=1.0, info="")
            while self.progress() < 1:
                self.train_step()
                if self.step % LOG_EVERY == 0 or self.progress() >= 1:
                    self.log()
                bar.update(task, completed=min(self.progress(), 1.0), info=self.info())
        if console is not None:
            console.print(self.stats(torch.get_num_threads()).summary(), soft_wrap=True)

    def info(self) -> str:
        return (f"step {self.step}  loss {self.loss:.4f}  PSNR {self.last['psnr']:.1f} dB  "
                f"used {self.last['used']}/{self.model.codebook_size}")

    def stats(self, threads: int) -> TrainStats:
        if self.window_codes:
            self.log()
        return TrainStats(steps=self.step, seconds=time.perf_counter() - self.start,
                          threads=threads, images=len(self.data), loss=self.loss,
                          psnr=self.last["psnr"], used=self.last["used"],
                          perplexity=self.last["perplexity"],
                          restarted=self.model.quantizer.restarted)


@torch.no_grad()
def evaluate_image_tokenizer(model: ImageTokenizer, images: Tensor, *, batch_size: int = 64,
                             bf16: bool = False) -> dict[str, float]:
    """Round-trip (N, 3, S, S) uint8 images -> PSNR, codebook usage/perplexity, images/s.

    Returns {"psnr", "used", "usage", "perplexity", "images_per_s", "images"}; the
    reconstructions are rounded to 8 bits first, as a saved PNG would be.
    """
    model.eval()
    device = model.codebook.device
    autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()
    codes, total, start = [], 0.0, time.perf_counter()
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float() / 255
        with autocast:
            c = model.encode(x)
            recon = model.decode(c)
        recon = (recon * 255).round() / 255
        codes.append(c.cpu())
        total += psnr(recon, x) * len(x)
    seconds = time.perf_counter() - start
    stats = code_stats(torch.cat(codes), model.codebook_size) if codes else code_stats(
        torch.zeros(0, dtype=torch.long), model.codebook_size)
    return {"psnr": total / max(len(images), 1), **stats, "images": len(images),
            "images_per_s": len(images) / max(seconds, 1e-9)}


def train_image_command(*, data: list[Path], out: Path, size: int = 64, downsample: int = 4,
                        codebook: int = 1024, minutes: float = 10.0, steps: int | None = None,
                        batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                        threads: int | None = None, res_blocks: int = 1, mid_blocks: int = 1,
                        norm: Norm = "group") -> None:
    """Train the VQ image tokenizer on the images of a corpus and save it to a folder.

    Args:
        data: JSONL manifests (their image segments, relative to each manifest's folder),
            folders of images (searched recursively) or image files. Malformed lines, paths
            leaving the manifest's folder and unreadable images are skipped and counted.
        out: folder to write `config.json` and `model.safetensors` into (replaced atomically).
        size: images are resized (shorter side) and center-cropped to size x size.
        downsample: side of the image patch behind one code (a power of 2): codes per image
            are (size / downsample) squared.
        codebook: number of codes.
        minutes: wall-clock training budget; ignored when --steps is given.
        steps: train exactly this many steps (deterministic for a seed and thread count).
        batch_size: images per step.
        lr: peak learning rate (AdamW; warm-up, then cosine to a tenth).
        seed: random seed for initialisation and batches.
        threads: torch CPU threads (default: torch's choice).
        res_blocks: residual blocks per resolution level of the encoder (the decoder has one
            more).
        mid_blocks: residual blocks at the lowest resolution, in the encoder and the decoder.
        norm: group (GroupNorm: every code depends on the whole image's statistics) or none
            (codes depend on their neighbourhood only: see the printed receptive field).
    """
    console = Console(stderr=True)
    config = ImageTokenizerConfig(image_size=size, downsample=downsample, codebook_size=codebook,
                                  n_res=res_blocks, n_mid=mid_blocks, norm=norm)
    paths, stats = find_images(data)
    images, failed = decode_images(paths, size)
    console.print(f"{len(paths):,} images from {stats.summary()}; {len(failed)} unreadable"
                  + (f" (first: {failed[0][1]})" if failed else ""), soft_wrap=True)
    if len(images) == 0:
        raise ImageTokenizerError(f"no readable images in {', '.join(map(str, data))}")
    model, stats = train_image_tokenizer(
        images, config, steps=steps, minutes=None if steps else minutes, batch_size=batch_size,
        lr=lr, seed=seed, threads=threads)
    with num_threads(threads):
        final = evaluate_image_tokenizer(model, images[:2048])
    model.save(out)
    print(f"{out}: PSNR {final['psnr']:.2f} dB on {final['images']:,} training images, "
          f"{final['used']}/{codebook} codes used (perplexity {final['perplexity']:.0f}), "
          f"{stats.steps} steps in {stats.seconds / 60:.1f} min; encoder receptive field "
          f"{config.receptive_field} px{' and GroupNorm' if norm == 'group' else ''}",
          file=sys.stdout)
