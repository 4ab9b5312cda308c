"""`omnitok bench`: throughput of every stage and modality, side by side with baselines.

Shared measurement helpers live here (timings with their spread, the machine's copy
bandwidth, the header); each stage's benchmark sits with its code (generate/bench.py,
tokenizers/bench.py, train/bench.py, kernels/bench.py) and the default suite below runs them
all. Every figure is the median of >= 5 timed runs after a warm-up run, printed with its
spread (min..max): two runs agree when their spreads overlap.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from omnitok import OmnitokError

STAGES = ("generate", "media", "tokenizers", "train")


@dataclass
class Timing:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Timing:
        return cls(statistics.median(values), min(values), max(values))

    def scaled(self, factor: float) -> Timing:
        return Timing(self.median * factor, self.low * factor, self.high * factor)

    def rate(self, amount: float) -> Timing:
        """amount / seconds for each figure (the spread's ends swap)."""
        return Timing(amount / self.median, amount / self.high, amount / self.low)


def measure(run: Callable[[], tuple[float, ...]], repeats: int) -> tuple[Timing, ...]:
    """Each figure `run` returns (seconds), over `repeats` runs after one warm-up run."""
    run()
    results = [run() for _ in range(repeats)]
    return tuple(Timing.of(list(column)) for column in zip(*results))


def time_call(fn: Callable[[], object], repeats: int) -> Timing:
    """Seconds per call of `fn`, after one warm-up call."""
    def run() -> tuple[float]:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0,)

    return measure(run, repeats)[0]


def copy_bandwidth(megabytes: int = 512, repeats: int = 9) -> Timing:
    """Bytes copied per second by a large tensor copy (STREAM's Copy counts twice this:
    each byte is read and written). The usual roof for memory-bound decoding."""
    n = megabytes * 2**20 // 4
    src, dst = torch.rand(n), torch.empty(n)
    dst.copy_(src)  # touch the pages
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        rates.append(n * 4 / (time.perf_counter() - t0))
    return Timing.of(rates)


def read_bandwidth(megabytes: int = 512, repeats: int = 9) -> Timing:
    """Bytes read per second by a large tensor sum: the roof of a read-only workload (higher
    than the copy's: nothing is written back)."""
    src = torch.rand(megabytes * 2**20 // 4)
    src.sum()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        rates.append(src.numel() * 4 / (time.perf_counter() - t0))
    return Timing.of(rates)


def machine() -> dict:
    """Versions and the device, for benchmark headers."""
    import omnitok

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu = torch.cuda.get_device_name()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"omnitok": omnitok.__version__, "torch": torch.__version__,
            "triton": triton_version, "device": cpu, "threads": torch.get_num_threads()}


def write_report(path: Path, report: dict) -> None:
    import json

    from omnitok import atomic_write_text

    atomic_write_text(Path(path), json.dumps(report, indent=2, default=str) + "\n")


def bench_suite(*, compare: Literal["hf", "none"] = "hf", model: str = "small",
                batch: list[int] = (1, 8), prompt_len: int = 128, gen_len: int = 64,
                repeats: int = 5, train_seq_len: int = 512, stages: list[str] = STAGES,
                threads: int | None = None, json: Path | None = None,
                plot: Path | None = None) -> None:
    """The default benchmark suite: generation, media, tokenizers and training (~5 minutes on
    a 2-core CPU), every row side by side with transformers where one exists.

    Subcommands time one stage with more options: `omnitok bench generate|tokenizers|train|
    kernels --help`.

    Args:
        compare: `hf` runs the same weights through transformers on every comparable row.
        model: model preset with random weights.
        batch: decode batch sizes.
        prompt_len: prompt ids per row.
        gen_len: generated ids per row.
        repeats: timed runs per figure, after one warm-up run.
        train_seq_len: tokens per training row.
        stages: which stages to run: generate, media, tokenizers, train.
        threads: CPU threads (default: torch's).
        json: also write every figure here.
        plot: also draw decode throughput against batch size per backend into this PNG.
    """
    from omnitok.generate import bench as gen_bench
    from omnitok.tokenizers.bench import bench_tokenizer_rows, print_tokenizer_rows

    if threads:
        torch.set_num_threads(threads)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise OmnitokError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    copy, read = copy_bandwidth(), read_bandwidth()
    info = {**machine(), "model": model, "copy_GBps": round(copy.high / 1e9, 2),
            "read_GBps": round(read.high / 1e9, 2),
            "repeats": repeats, "attention": "sdpa" if not torch.cuda.is_available()
            else "triton"}
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    report: dict = {"info": info}
    vocab = gen_bench.media_vocab()
    if "generate" in stages or "media" in stages:
        net, hf = gen_bench.build_models(model, vocab.padded_size, compare == "hf")
        if "generate" in stages:
            rows = []
            for dtype in (torch.float32, torch.bfloat16):
                rows += gen_bench.bench_rows(net.to(dtype), batches=list(batch),
                                             prompt_len=prompt_len, gen_len=gen_len,
                                             repeats=repeats, compare_hf=hf is not None,
                                             compile=False, hf_model=hf)
            rows = _drop_repeated_hf(rows)
            print("\ngeneration (greedy, random weights)")
            gen_bench.print_table(rows, copy.high, read.high)
            report["generate"] = gen_bench.row_records(rows, copy.high, read.high)
            if plot is not None:
                gen_bench.plot_throughput(rows, plot)
        if "media" in stages:
            media = gen_bench.bench_media(net.to(torch.bfloat16), vocab, repeats=repeats,
                                          hf_model=hf)
            print("\nmedia (omnitok bfloat16; transformers float32)")
            gen_bench.print_media(media)
            report["media"] = media
    if "tokenizers" in stages:
        rows = bench_tokenizer_rows(None, repeats=repeats)
        print("\ntokenizers (demo configuration)")
        print_tokenizer_rows(rows)
        report["tokenizers"] = rows
    if "train" in stages:
        from omnitok.train.bench import bench_train

        rows = bench_train(model, seq_len=train_seq_len, hf=compare == "hf", threads=threads,
                           steps=repeats)
        print(f"\ntraining step ({model}, {train_seq_len} tokens per row)")
        for r in rows:
            print(r.line())
        report["train"] = [asdict(r) for r in rows]
    if json is not None:
        write_report(json, report)


def _drop_repeated_hf(rows: list) -> list:
    """transformers runs float32 for both omnitok dtypes: keep its first row per batch."""
    seen, out = set(), []
    for r in rows:
        key = (r.backend, r.batch)
        if r.backend == "transformers" and key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out
