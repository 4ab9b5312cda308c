"""Train an audio tokenizer on the user's audio; the `omnitok tokenizer train audio` command.

kind "encodec" (a small EncodecModel), in three phases, as measured on a 2-core CPU:
1. Kaiming-initialised convolutions with zero biases, trained as a plain autoencoder (no
   quantizer) for `warmup` of the budget: stock init collapses (the encoder ignores its input);
2. k-means initialisation of each level's codebook on the residuals of the warmed-up encoder;
3. RVQ training: straight-through estimator, commitment loss, EMA codebooks (decay 0.95) with
   dead-code restarts that survive the next EMA step, a random number of levels per step.
Loss: waveform L1 + multi-scale log-mel L1 (mel magnitudes floored at 1e-2). No discriminator.
Judge the result by per-level code usage and by listening (or a recogniser), not by the loss.

kind "mel": statistics of the log-mel frames, then k-means per level on the residuals.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from omnitok import OmnitokError
from omnitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from omnitok.tokenizers.audio_data import collect_audio
from omnitok.tokenizers.audio_io import AudioTokenizerError
from omnitok.tokenizers.audio_metrics import MultiScaleMel, codebook_usage
from omnitok.tokenizers.audio_rvq import init_codebooks, quantize_train


@dataclass
class TrainOptions:
    """How long and how: a wall-clock budget (`minutes`) or a fixed number of `steps`."""

    minutes: float = 15.0
    steps: int | None = None
    batch_size: int = 8
    segment_seconds: float = 1.0
    lr: float = 1e-3
    warmup: float = 0.15  # share of the budget trained without the quantizer
    decay: float = 0.95
    dead_threshold: float = 0.05
    commitment: float = 1.0
    wave_weight: float = 1.0
    kmeans_vectors: int = 20_000
    bf16: bool = False
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    callback: Callable[[int, AudioTokenizer], None] | None = None  # called every `every` steps
    every: int = 0


@dataclass
class TrainStats:
    steps: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # one row per logged step
    usage: list[float] = field(default_factory=list)  # share of codes used per level (last window)


def train_audio_tokenizer(clips: list[torch.Tensor], config: AudioTokenizerConfig, *,
                          minutes: float = 15.0, steps: int | None = None, batch_size: int = 8,
                          segment_seconds: float = 1.0, seed: int = 0, threads: int | None = None,
                          progress: bool = True, **advanced) -> tuple[AudioTokenizer, TrainStats]:
    """Train a tokenizer of `config` on clips (C, T) at `config.sample_rate`.

    The budget is `steps` when given, else `minutes` of wall-clock time. `advanced` sets the
    other `TrainOptions` fields (lr, warmup, decay, dead_threshold, bf16, callback, ...).
    """
    opts = TrainOptions(minutes=minutes, steps=steps, batch_size=batch_size,
                        segment_seconds=segment_seconds, seed=seed, threads=threads,
                        progress=progress, **advanced)
    clips = [c for c in clips if c.shape[-1] > 0]
    if not clips:
        raise AudioTokenizerError("no audio to train on")
    if config.kind == "encodec_24khz":
        raise AudioTokenizerError("the encodec_24khz kind is loaded pretrained, not trained here")
    previous = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    try:
        tok = AudioTokenizer(config)
        train = _train_mel if config.kind == "mel" else _train_encodec
        stats = train(tok, clips, opts)
    finally:
        torch.set_num_threads(previous)
    return tok.eval(), stats


# ---- kind "mel" ----------------------------------------------------------------------------------
@torch.no_grad()
def _train_mel(tok: AudioTokenizer, clips: list[torch.Tensor], opts: TrainOptions) -> TrainStats:
    """Per-dimension statistics of the stacked log-mel frames, then k-means level by level."""
    start, codec = time.perf_counter(), tok.codec
    frames = torch.cat([tok.embed(c[None].float())[0].T for c in clips])  # (N, D), raw log-mel
    codec.mean.copy_(frames.mean(0))
    codec.std.copy_(frames.std(0).clamp_min(1e-3))
    x = (frames - codec.mean) / codec.std
    gen = torch.Generator().manual_seed(opts.seed)
    cap = 64 * tok.codebook_size  # vectors per k-means: plenty for 64 per code, bounded time
    if x.shape[0] > cap:
        x = x[torch.randperm(x.shape[0], generator=gen)[:cap]]
    iters = opts.steps or 20
    books = [layer._codebook for layer in codec.quantizer.vq.layers]
    with _progress(opts) as bar:
        task = bar.add_task(f"k-means on {x.shape[0]} log-mel frames", total=len(books))
        residual = init_codebooks(books, x, iters, gen,
                                  on_level=lambda k: bar.update(task, completed=k + 1))
    sample = torch.cat([c[:, : 30 * tok.sample_rate] for c in clips[:64]], dim=1)
    stats = TrainStats(steps=iters, seconds=time.perf_counter() - start,
                       usage=codebook_usage(tok.encode(sample[None]), tok.codebook_size))
    stats.history.append({"step": iters, "residual": float(residual.pow(2).mean())})
    return stats


# ---- kind "encodec" ------------------------------------------------------------------------------
def kaiming_init_(module: nn.Module, last_gain: float = 0.1) -> None:
    """Kaiming-normal conv weights (weight-norm aware, linear gain), zero biases.

    The last convolution is scaled by `last_gain` so the first outputs are quiet rather than
    orders of magnitude too loud.
    """
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    for m in convs:
        if hasattr(m, "weight_v"):  # torch.nn.utils.weight_norm: weight = g * v / |v|
            nn.init.kaiming_normal_(m.weight_v, nonlinearity="linear")
            with torch.no_grad():  # weight_norm(dim=0): one g per slice of dim 0
                m.weight_g.copy_(m.weight_v.norm(dim=(1, 2), keepdim=True))
        else:
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    if convs:
        last = convs[-1]
        with torch.no_grad():
            (last.weight_g if hasattr(last, "weight_g") else last.weight).mul_(last_gain)


class Batches:
    """Random `segment` crops of the clips, zero-padded when a clip is shorter."""

    def __init__(self, clips: list[torch.Tensor], segment: int, batch_size: int, seed: int):
        self.clips, self.segment, self.batch_size = clips, segment, batch_size
        self.rng = random.Random(seed)

    def __call__(self) -> torch.Tensor:  # (B, C, segment)
        out = []
        for _ in range(self.batch_size):
            clip = self.rng.choice(self.clips)
            start = self.rng.randint(0, max(0, clip.shape[-1] - self.segment))
            crop = clip[:, start: start + self.segment]
            out.append(F.pad(crop, (0, self.segment - crop.shape[-1])))
        return torch.stack(out).float()


def _train_encodec(tok: AudioTokenizer, clips: list[torch.Tensor],
                   opts: TrainOptions) -> TrainStats:
    codec = tok.codec.train()
    kaiming_init_(codec.encoder, last_gain=1.0)
    kaiming_init_(codec.decoder)
    segment = max(1, round(opts.segment_seconds * tok.frame_rate)) * tok.hop_length
    batches = Batches(clips, segment, opts.batch_size, opts.seed)
    optim = torch.optim.AdamW(codec.parameters(), lr=opts.lr, betas=(0.8, 0.99),
                              weight_decay=0.0)
    books = [layer._codebook for layer in codec.quantizer.vq.layers]
    gen = torch.Generator().manual_seed(opts.seed)
    step = _Step(tok, optim, books, opts, gen)
    clock, stats = _Clock(opts), TrainStats()
    with _progress(opts) as bar:
        task = bar.add_task("warm-up", total=clock.total)
        while not clock.done(stats.steps):
            quantize = clock.past_warmup(stats.steps)
            if quantize and not clock.initialised:
                _kmeans_init(tok, books, batches, opts, gen)
                clock.initialised = True
            n_levels = int(torch.randint(1, tok.n_q + 1, (), generator=gen))
            row = step(batches(), n_levels if quantize else 0)
            stats.steps += 1
            if opts.callback is not None and opts.every and stats.steps % opts.every == 0:
                with clock.paused():
                    opts.callback(stats.steps, tok)
            if stats.steps % 10 == 0 or clock.done(stats.steps):
                row.update(step=stats.steps, seconds=clock.elapsed())
                stats.history.append(row)
                stats.usage = step.usage()
                bar.update(task, completed=clock.progress(stats.steps),
                           description=_describe(row, stats.usage, quantize))
    if not clock.initialised:  # a budget too small to reach the quantizer phase
        _kmeans_init(tok, books, batches, opts, gen)
    stats.seconds = clock.elapsed()
    return stats


class _Step:
    """One optimisation step; remembers the codes of the last `window` steps for usage."""

    def __init__(self, tok, optim, books, opts: TrainOptions, gen, window: int = 50) -> None:
        self.tok, self.optim, self.books, self.opts, self.gen = tok, optim, books, opts, gen
        self.loss_fn = MultiScaleMel(tok.sample_rate)
        self.recent: deque[torch.Tensor] = deque(maxlen=window)  # (n_q, K) counts per step

    def __call__(self, x: torch.Tensor, n_levels: int) -> dict:
        codec, opts = self.tok.codec, self.opts
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.bf16)
        with autocast:
            emb = codec.embed(x)
        row, commit = {}, torch.zeros(())
        if n_levels:
            emb, commit, codes = quantize_train(self.books, emb.float(), n_levels,
                                                decay=opts.decay,
                                                dead_threshold=opts.dead_threshold,
                                                generator=self.gen)
            self._count(codes)
            row["commit"] = commit.item()
        with autocast:
            y = codec.synthesize(emb)
        y = y.float()[..., : x.shape[-1]]
        mel, wave = self.loss_fn(y, x), F.l1_loss(y, x)
        loss = mel + opts.wave_weight * wave + opts.commitment * commit
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        self.optim.step()
        row.update(loss=loss.item(), mel=mel.item(), wave=wave.item(), levels=n_levels)
        return row

    def _count(self, codes: torch.Tensor) -> None:
        k = self.tok.codebook_size
        counts = torch.zeros(self.tok.n_q, k)
        for level in range(codes.shape[1]):
            counts[level] = torch.bincount(codes[:, level].reshape(-1), minlength=k)
        self.recent.append(counts)

    def usage(self) -> list[float]:
        """Share of each level's codes chosen at least once in the last `window` steps."""
        if not self.recent:
            return [0.0] * self.tok.n_q
        return (sum(self.recent) > 0).float().mean(dim=1).tolist()


@torch.no_grad()
def _kmeans_init(tok, books, batches, opts, gen) -> None:
    """k-means on `kmeans_vectors` embeddings (4 to 32 per code) of fresh crops."""
    need = min(max(opts.kmeans_vectors, 4 * tok.codebook_size), 32 * tok.codebook_size)
    crops = Batches(batches.clips, batches.segment, 32, opts.seed + 1)
    vectors = []
    while sum(v.shape[0] for v in vectors) < need:
        emb = tok.codec.embed(crops())
        vectors.append(emb.transpose(1, 2).reshape(-1, emb.shape[1]).float())
    init_codebooks(books, torch.cat(vectors)[:need], iters=10, generator=gen)


class _Clock:
    """The budget: `steps` if given, else wall-clock `minutes`; warm-up is a share of it."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts, self.start, self.initialised = opts, time.perf_counter(), False
        self.total = float(opts.steps) if opts.steps is not None else opts.minutes * 60

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count against the budget."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - t

    def progress(self, steps: int) -> float:
        return float(steps) if self.opts.steps is not None else min(self.elapsed(), self.total)

    def done(self, steps: int) -> bool:
        return self.progress(steps) >= self.total

    def past_warmup(self, steps: int) -> bool:
        return self.progress(steps) >= self.opts.warmup * self.total


def _describe(row: dict, usage: list[float], quantize: bool) -> str:
    used = " ".join(f"{u:.0%}" for u in usage) if quantize else "(warm-up, no quantizer)"
    return (f"step {row['step']}  mel {row['mel']:.3f}  wave {row['wave']:.4f}  "
            f"codes used per level {used}")


def _progress(opts: TrainOptions) -> Progress:
    console = Console(stderr=True)
    quiet = not opts.progress or not console.is_terminal
    return Progress(TextColumn("audio codec"), BarColumn(), TextColumn("{task.description}"),
                    TimeElapsedColumn(), console=console, transient=True, disable=quiet)


def _n_fft(sample_rate: int) -> int:
    """A power-of-two FFT of about 64 ms (1024 at 16 kHz)."""
    return 2 ** round(math.log2(sample_rate * 0.064))


# ---- CLI -----------------------------------------------------------------------------------------
def train_audio_command(*, data: list[Path], out: Path,
                        kind: Literal["encodec", "mel"] = "encodec",
                        sample_rate: int = 16000, n_q: int = 4, codebook: int = 1024,
                        minutes: float = 15.0, steps: int | None = None, batch_size: int = 8,
                        segment_seconds: float = 1.0, mel_stack: int = 2, seed: int = 0,
                        threads: int | None = None) -> None:
    """Train an RVQ audio codec on the audio of manifests or folders and save it to a folder.

    Args:
        data: JSONL manifests (the audio segments of every document; paths relative to the
            manifest, never escaping its folder) or folders searched for audio files.
        out: folder to write config.json and model.safetensors into (replaced atomically).
        kind: "encodec" (a small EnCodec trained here, for real audio) or "mel" (RVQ over
            log-mel frames with Griffin-Lim inversion: fast, for synthetic speech).
        sample_rate: the codec's sample rate; audio is resampled and downmixed to it.
        n_q: number of RVQ levels (tokens per frame; more levels, more bandwidth).
        codebook: codes per level (a power of 2).
        minutes: wall-clock training budget (ignored when --steps is given).
        steps: train for exactly this many steps instead (k-means iterations for kind mel).
        batch_size: segments per step.
        segment_seconds: length of each training segment (kind encodec).
        mel_stack: log-mel frames (hop 20 ms at 16 kHz) per code frame (kind mel); 2 gives
            25 code frames per second.
        seed: random seed for initialisation, crops and levels.
        threads: torch CPU threads (default: torch's choice).
    """
    config = AudioTokenizerConfig(kind=kind, sample_rate=sample_rate, n_q=n_q,
                                  codebook_size=codebook, mel_stack=mel_stack,
                                  mel_hop=sample_rate // 50, n_fft=_n_fft(sample_rate))
    audio = collect_audio(data, config.sample_rate, config.channels)
    print(audio.summary(config.sample_rate), file=sys.stderr)
    if not audio.clips:
        raise OmnitokError("no readable audio in --data")
    tok, stats = train_audio_tokenizer(audio.clips, config, minutes=minutes, steps=steps,
                                       batch_size=batch_size, segment_seconds=segment_seconds,
                                       seed=seed, threads=threads)
    usage = " ".join(f"{u:.0%}" for u in stats.usage)
    tok.save(out, metadata={"steps": stats.steps, "seconds": round(stats.seconds, 1),
                            "usage": stats.usage, "skipped": dict(audio.skipped)})
    print(f"{out}: {stats.steps} steps in {stats.seconds / 60:.1f} min, codes used per level "
          f"{usage}")
