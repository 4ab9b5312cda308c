"""Attention speed per backend: `python -m omnitok.kernels.bench` (CUDA only).

Prefill/training attention: TFLOP/s of every available backend (triton, sdpa, flash) over
sequence lengths and head dims, causal, forward and forward+backward, with FLOPs counted as
4 * B * H * T * S * D (halved for causal; the backward counts 2.5x the forward), and the ratio
of triton to the best other backend. Decode attention: GB/s reading a full KV cache, and the
fraction of the GPU's memory bandwidth. On a machine without CUDA it says so and exits 0: only
correctness can be checked there (`TRITON_INTERPRET=1 pytest tests/kernels`).
"""

from __future__ import annotations

import sys
from typing import Literal

import torch

from omnitok import OmnitokError
from omnitok.kernels.dispatch import BACKENDS, attention, resolve_backend

SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# HBM bandwidth (bytes/s) by device name, when the driver does not report clock and bus width
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.04e12, "A100 80GB PCIe": 1.94e12, "A100": 1.56e12}


def bench_kernels(seqlens: list[int] = SEQLENS, head_dims: list[int] = (64, 128),
                  dtype: Literal["bf16", "fp16"] = "bf16", backends: list[str] = BACKENDS,
                  tokens: int = 16384, width: int = 2048, backward: bool = True,
                  decode_cache: int = 32768, decode_batch: int = 4) -> int:
    """Time attention on each backend and print TFLOP/s (CUDA only; elsewhere says so).

    Args:
        seqlens: sequence lengths T (= S); the batch is tokens // T.
        head_dims: head dims D; the number of heads is width // D.
        dtype: input dtype.
        backends: backends to compare (unavailable ones are reported and skipped).
        tokens: tokens per batch (B * T).
        width: H * D.
        backward: also time forward+backward.
        decode_cache: KV-cache length for the decode benchmark (0 skips it).
        decode_batch: sequences decoding together.
    """
    if not torch.cuda.is_available():
        print("omnitok bench: no CUDA device here, so kernel speed cannot be measured; only "
              "correctness can be checked on this machine (TRITON_INTERPRET=1 pytest "
              "tests/kernels). Nothing was timed.")
        return 0
    usable = []
    for name in backends:
        try:
            usable.append(resolve_backend(name, "cuda"))
        except OmnitokError as e:
            print(f"skipping {name}: {e}")
    print(f"device: {torch.cuda.get_device_name()}, {dtype}, causal, B*T = {tokens}, "
          f"H*D = {width}; TFLOP/s")
    for mode in ("fwd", "fwd+bwd") if backward else ("fwd",):
        for d in head_dims:
            for t in seqlens:
                _prefill_row(usable, mode, max(1, tokens // t), width // d, t, d, DTYPES[dtype])
    if decode_cache:
        _decode_table(usable, decode_batch, decode_cache, DTYPES[dtype])
    return 0


def _prefill_row(backends: list[str], mode: str, b: int, h: int, t: int, d: int,
                 dtype: torch.dtype) -> None:
    from triton.testing import do_bench

    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    flops = 4 * b * h * t * t * d / 2 * (3.5 if mode == "fwd+bwd" else 1.0)
    speeds = {}
    for name in backends:
        def step(name=name):
            out = attention(q, k, v, causal=True, backend=name)
            if mode == "fwd+bwd":
                out.backward(do)
        try:
            step()  # compile / autotune outside the timing
            ms = do_bench(step, grad_to_none=[q, k, v])
        except (RuntimeError, OmnitokError) as e:  # e.g. out of memory, unsupported shape
            print(f"  {name} failed at T={t} D={d}: {str(e).splitlines()[0]}")
            continue
        speeds[name] = flops / ms / 1e9
    cells = "  ".join(f"{n} {s:7.1f}" for n, s in speeds.items())
    others = [s for n, s in speeds.items() if n != "triton"]
    ratio = (f"  triton/best other {speeds['triton'] / max(others):.2f}"
             if "triton" in speeds and others else "")
    print(f"{mode:>7} D={d:<3} T={t:<6} B={b:<3} {cells}{ratio}")


def _peak_bandwidth() -> float | None:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and bus:
        return 2 * clock * 1e3 * bus / 8  # kHz, bits, double data rate
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def _decode_table(backends: list[str], b: int, s: int, dtype: torch.dtype) -> None:
    """One new query per sequence over a full cache: bytes of K and V read per second."""
    from triton.testing import do_bench

    h, hkv, d = 32, 8, 128
    q = torch.randn(b, h, 1, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, hkv, s, d, device="cuda", dtype=dtype) for _ in range(2))
    q_pos = torch.full((b, 1), s - 1, device="cuda")
    nbytes = 2 * k.numel() * k.element_size()
    peak = _peak_bandwidth()
    print(f"decode: B={b} H={h} Hkv={hkv} D={d}, cache {s} tokens "
          f"({nbytes / 2**20:.0f} MiB of K/V per step)")
    with torch.no_grad():
        for name in backends:
            try:
                ms = do_bench(lambda name=name: attention(q, k, v, q_pos=q_pos, backend=name))
            except (RuntimeError, OmnitokError) as e:
                print(f"  {name} failed: {str(e).splitlines()[0]}")
                continue
            gbs = nbytes / ms / 1e6
            share = f" ({gbs * 1e9 / peak:.0%} of {peak / 1e12:.2f} TB/s)" if peak else ""
            print(f"  {name:>6} {ms * 1e3:8.1f} us  {gbs:7.0f} GB/s{share}")


def bench_packed_attention(*, batch_size: int = 8, seq_len: int = 1024, heads: int = 8,
                           kv_heads: int = 4, head_dim: int = 32, doc_min: int = 150,
                           doc_max: int = 380, repeats: int = 5, device: str = "cpu",
                           dtype: str = "float32", threads: int | None = None,
                           seed: int = 0) -> int:
    """Packed-document attention on the sdpa backend, forward + backward, side by side: the
    chunked path (`document_chunked_attention`) against one SDPA call under the dense (T, T)
    document mask, and the path the model takes (`sdpa_attention`: in bf16 on the CPU, the
    chunked path in float32). Runs on the CPU (or CUDA).

    Args:
        batch_size: packed rows.
        seq_len: tokens per row.
        heads: query heads.
        kv_heads: key/value heads.
        head_dim: dims per head.
        doc_min: shortest document (ids); lengths are drawn uniformly up to doc_max.
        doc_max: longest document.
        repeats: timed calls per path (after one warm-up call).
        device: cpu or cuda.
        dtype: float32, bfloat16 or float16 inputs.
        threads: CPU threads (default: torch's).
        seed: seed of the inputs and the document lengths.
    """
    from omnitok.bench import time_call
    from omnitok.kernels import dispatch, reference

    if not 1 <= doc_min <= doc_max:
        raise OmnitokError(f"need 1 <= doc_min <= doc_max, got {doc_min} and {doc_max}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise OmnitokError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    doc = torch.zeros(batch_size, seq_len, dtype=torch.long)
    for row in doc:
        start, n = 0, 0
        while start < seq_len:
            length = int(torch.randint(doc_min, doc_max + 1, (), generator=g))
            row[start:start + length], start, n = n, start + length, n + 1
    q, k, v = (torch.randn(batch_size, h, seq_len, head_dim, generator=g)
               .to(device, getattr(torch, dtype)).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    doc = doc.to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def dense() -> torch.Tensor:
        mask = reference.attention_mask(seq_len, seq_len, causal=True, doc_ids=doc, q_pos=None,
                                        device=q.device)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=heads != kv_heads)

    def chunked() -> torch.Tensor:
        return dispatch.document_chunked_attention(q, k, v, doc, causal=True, scale=None)

    def model_path() -> torch.Tensor:
        return dispatch.sdpa_attention(q, k, v, causal=True, doc_ids=doc, q_pos=None, scale=None)

    def fwd_bwd(fn) -> None:
        fn().sum().backward()
        sync()

    with torch.no_grad():
        err = max(float((dense().float() - fn().float()).abs().max())
                  for fn in (chunked, model_path))
    mean_doc = seq_len * batch_size / int((doc[:, 1:] != doc[:, :-1]).sum() + batch_size)
    print(f"packed attention, sdpa on {device}, {dtype}, fwd+bwd: B={batch_size} T={seq_len} "
          f"H={heads}/{kv_heads} D={head_dim}, documents {doc_min}-{doc_max} ids "
          f"(mean {mean_doc:.0f}), chunks of {dispatch.DOC_CHUNK} queries; "
          f"max |difference| {err:.1e}")
    times = {name: time_call(lambda fn=fn: fwd_bwd(fn), repeats)
             for name, fn in (("dense mask", dense), ("chunked", chunked),
                              ("model path", model_path))}
    for name, t in times.items():
        print(f"  {name:>10} {t.median * 1e3:8.1f} ms [{t.low * 1e3:.0f}-{t.high * 1e3:.0f}]")
    base = times["dense mask"].median
    print(f"  faster than the dense mask: chunked {base / times['chunked'].median:.2f}x, "
          f"model path {base / times['model path'].median:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    from omnitok.cli import build_parser

    parser = build_parser(bench_kernels, "python -m omnitok.kernels.bench", __doc__)
    args = vars(parser.parse_args(argv))
    args.pop("config", None)
    return bench_kernels(**args)


if __name__ == "__main__":
    sys.exit(main())
