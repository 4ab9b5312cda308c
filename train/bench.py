"""Training throughput side by side: omnitok's training step against a `transformers`
LlamaForCausalLM forward + backward on the same batch and the same weights.

    from omnitok.train.bench import bench_train
    for row in bench_train(preset="small", batch_size=1, seq_len=512):
        print(row.line())

omnitok's step is what `omnitok train` runs: forward, the weighted objective, backward and the
AdamW step. The Hugging Face side is a forward with `labels` (its own shifted cross-entropy)
and a backward, without an optimizer step. Both run the same ids, in float32 or under bfloat16
autocast. Peak memory is the highest resident set size sampled during the timed steps (CPU)
or torch's peak allocation (CUDA).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from omnitok import OmnitokError
from omnitok.bench import Timing
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.vocab import AudioSpec, Vocab
from omnitok.train.objective import group_table, objective

BENCH_VOCAB = Vocab(text_size=8000, image_size=1024, audio=AudioSpec(1024, 4, 16000, 50.0))


@dataclass
class BenchRow:
    name: str  # "omnitok" or "transformers"
    precision: str  # "fp32" or "bf16"
    tokens_per_s: float  # at the median step
    step_s: Timing  # seconds per step: median, fastest, slowest
    peak_mb: float  # peak memory during the timed steps

    def line(self) -> str:
        s = self.step_s
        return (f"{self.name:13s} {self.precision:5s} {self.tokens_per_s:9,.0f} tokens/s  "
                f"{s.median * 1e3:8.1f} ms/step [{s.low * 1e3:.0f}-{s.high * 1e3:.0f}]  "
                f"peak {self.peak_mb:8,.0f} MB")


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs (CPU: sampled every
    few milliseconds from /proc; CUDA: torch's peak allocation)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    @contextlib.contextmanager
    def watch(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            self._stop.wait(0.002)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device
               ) -> tuple[Timing, float]:
    """(seconds per step, peak MB) of `step` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, memory = [], PeakMemory(device)
    with memory.watch():
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    return Timing.of(times), memory.peak_mb


def omnitok_step(model: Transformer, ids: torch.Tensor, targets: torch.Tensor,
                 autocast: bool, compiled: bool = False) -> Callable[[], None]:
    """One training step of `omnitok train` (forward, objective, backward, AdamW step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1,
                                  fused=ids.device.type in ("cpu", "cuda") or None)
    groups = group_table(BENCH_VOCAB).to(ids.device)
    weights = torch.ones_like(targets, dtype=torch.float32)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(ids)
            loss = objective(logits, targets, weights, groups).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def hf_step(hf, ids: torch.Tensor, autocast: bool) -> Callable[[], None]:
    """A `transformers` forward with labels and a backward (no optimizer step)."""
    def step() -> None:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        hf.zero_grad(set_to_none=True)

    return step


def bench_train(preset: str = "small", batch_size: int = 1, seq_len: int = 512,
                steps: int = 5, warmup: int = 2, precisions: tuple[str, ...] = ("fp32", "bf16"),
                compiled: bool = False, device: str = "cpu", hf: bool = True,
                threads: int | None = None, seed: int = 0) -> list[BenchRow]:
    """Time omnitok's training step and (hf=True) the `transformers` forward + backward.

    Each measurement runs in a fresh process (so peak memory is its own: weights, gradients,
    optimizer state and activations) on the same weights (the same seed) and the same ids.
    """
    import multiprocessing

    jobs = [(name, p) for p in precisions for name in (("transformers",) if hf else ())
            + ("omnitok",)]
    context = multiprocessing.get_context("spawn")
    rows = []
    for name, precision in jobs:
        with context.Pool(1) as pool:
            rows.append(pool.apply(_measure, (name, precision, preset, batch_size, seq_len,
                                              steps, warmup, compiled, device, threads, seed)))
    return rows


def _measure(name: str, precision: str, preset: str, batch_size: int, seq_len: int, steps: int,
             warmup: int, compiled: bool, device: str, threads: int | None,
             seed: int) -> BenchRow:
    """One row of `bench_train`, measured in this (fresh) process."""
    from omnitok.model.export_hf import to_hf

    if threads:
        torch.set_num_threads(threads)
    dev, bf16 = torch.device(device), precision == "bf16"
    base = _rss_mb() if dev.type == "cpu" else 0.0
    torch.manual_seed(seed)
    args = ModelArgs.from_name(preset, vocab_size=BENCH_VOCAB.padded_size)
    args = args.replace(max_seq_len=max(args.max_seq_len, seq_len))
    model = Transformer(args).to(dev).train()
    ids = torch.randint(0, BENCH_VOCAB.size, (batch_size, seq_len), device=dev)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    if name == "transformers":
        reference = to_hf(model).to(dev).train()
        del model
        step = hf_step(reference, ids, bf16)
    else:
        step = omnitok_step(model, ids, targets, bf16, compiled)
        name += " (compiled)" if compiled else ""
    step_s, peak = time_steps(step, steps, warmup, dev)
    return BenchRow(name, precision, ids.numel() / step_s.median, step_s, peak - base)


def bench_train_command(*, model: str = "small", batch_size: int = 1, seq_len: int = 512,
                        steps: int = 5, warmup: int = 2, precision: list[str] = ("fp32", "bf16"),
                        compile: bool = False, compare: Literal["hf", "none"] = "hf",
                        device: str = "cpu", threads: int | None = None,
                        json: Path | None = None) -> None:
    """Training step throughput and peak memory, side by side with transformers.

    Args:
        model: model preset with random weights.
        batch_size: rows per step.
        seq_len: tokens per row.
        steps: timed steps per row of the table (after the warm-up steps).
        warmup: untimed steps first.
        precision: fp32 and/or bf16 (autocast).
        compile: compile omnitok's model with torch.compile.
        compare: `hf` also times transformers' forward + backward on the same weights.
        device: cpu or cuda.
        threads: CPU threads (default: torch's).
        json: also write the rows here.
    """
    from dataclasses import asdict

    from omnitok.bench import machine, write_report

    bad = sorted(set(precision) - {"fp32", "bf16"})
    if bad:
        raise OmnitokError(f"unknown precision {bad}; choose fp32 and/or bf16")
    rows = bench_train(model, batch_size, seq_len, steps, warmup, tuple(precision), compile,
                       device, compare == "hf", threads)
    info = {**machine(), "model": model, "batch_size": batch_size, "seq_len": seq_len}
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    for row in rows:
        print(row.line())
    if json is not None:
        write_report(json, {"info": info, "train": [asdict(r) for r in rows]})


def bench_loss(*, tokens: int = 8192, vocab: int = 3648, repeats: int = 5, device: str = "cpu",
               threads: int | None = None, seed: int = 0) -> int:
    """The training loss on bf16 logits (autocast's output), forward + backward, side by side:
    the blockwise cross-entropy `omnitok train` uses against `F.cross_entropy` on a float32
    copy of the logits. The defaults are the demo recipe's step (8 x 1024 tokens, its vocabulary).

    Args:
        tokens: rows of logits (batch x sequence length).
        vocab: columns (the padded vocabulary).
        repeats: timed calls per path (after one warm-up call).
        device: cpu or cuda.
        threads: CPU threads (default: torch's).
        seed: seed of the logits and targets.
    """
    import torch.nn.functional as F

    from omnitok.bench import time_call
    from omnitok.model.loss import cross_entropy_lse

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(tokens, vocab, generator=g) * 3).bfloat16().to(device)
    logits.requires_grad_(True)
    target = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    paths = {"float32 copy": lambda: F.cross_entropy(logits.float(), target, reduction="none"),
             "blockwise": lambda: cross_entropy_lse(logits, target)[0]}
    grads = {}
    for name, loss in paths.items():
        loss().sum().backward()
        grads[name], logits.grad = logits.grad.double(), None
    diff = (grads["blockwise"] - grads["float32 copy"]).norm() / grads["float32 copy"].norm()
    print(f"loss fwd+bwd on {device}: {tokens} x {vocab} bf16 logits; gradients differ by "
          f"{float(diff):.1e} (relative)")

    def fwd_bwd(loss) -> None:
        loss().sum().backward()
        logits.grad = None
        sync()

    times = {name: time_call(lambda fn=fn: fwd_bwd(fn), repeats) for name, fn in paths.items()}
    for name, t in times.items():
        print(f"  {name:>12} {t.median * 1e3:8.1f} ms [{t.low * 1e3:.0f}-{t.high * 1e3:.0f}]")
    ratio = times["float32 copy"].median / times["blockwise"].median
    print(f"  blockwise / float32 copy: {ratio:.2f}x faster")
    return 0
