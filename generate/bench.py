"""Decode speed: omnitok's engine and `transformers` side by side, with the same weights.

`omnitok bench generate` prints, per backend and batch size: time to first id, prefill tok/s,
decode tok/s and ms/step, the memory bandwidth the decode achieves (weights + KV cache read
per step x steps/s) and its share of the machine's copy bandwidth measured in the same process
(STREAM convention: bytes read + bytes written per second, best of several copies of 512 MiB),
and the ratio to `transformers`. Each figure is the median over `repeats` runs after a warm-up
run, with the spread (min..max) so that two runs can be compared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from omnitok import atomic_write_text
from omnitok.generate.engine import Engine, Request, compiled_decode_step
from omnitok.generate.grammar import Grammar
from omnitok.generate.sampling import ModalitySampling
from omnitok.kernels import describe_backend
from omnitok.model.config import ModelArgs
from omnitok.model.export_hf import to_hf
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.vocab import Vocab


@dataclass
class Timing:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Timing:
        return cls(statistics.median(values), min(values), max(values))


def copy_bandwidth(megabytes: int = 512, repeats: int = 9) -> Timing:
    """Bytes/s of a large tensor copy (read + write), the machine's practical memory roof."""
    n = megabytes * 2**20 // 4
    src, dst = torch.rand(n), torch.empty(n)
    dst.copy_(src)  # touch the pages
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        rates.append(2 * n * 4 / (time.perf_counter() - t0))
    return Timing.of(rates)


def bytes_per_step(model: Transformer, batch: int, context: int) -> int:
    """Bytes a decode step must read: every weight but the embedding table, and the KV cache
    of `context` positions for each of `batch` rows (embedding rows read are negligible)."""
    a = model.args
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if not name.startswith("tok_embeddings") or a.tie_embeddings)
    size = model.tok_embeddings.weight.element_size()
    kv = 2 * a.n_layers * a.n_kv_heads * a.head_dim * context * batch * size
    return weights + kv


def speed_vocab(model: Transformer) -> Vocab:
    """A vocabulary whose text range covers the model's rows: decoding is unconstrained text."""
    v = Vocab(text_size=1, max_grid=1, pad_to=1)
    return Vocab(text_size=model.args.vocab_size - v.size + 1, max_grid=1, pad_to=1)


def time_engine(model: Transformer, prompt: torch.Tensor, new_tokens: int,
                compiled=None) -> tuple[float, float]:
    """(seconds to the first new id, seconds per later step) of greedy decoding."""
    vocab = speed_vocab(model)
    grammar = Grammar(vocab, target="text", allow_eos=False)  # every row takes new_tokens
    engine = Engine(model, grammar, ModalitySampling().greedy())
    engine.compiled = compiled
    requests = [Request(row, grammar.start(new_tokens)[0]) for row in prompt.tolist()]
    stamps = []
    t0 = time.perf_counter()
    for _ in engine.run(requests):
        stamps.append(time.perf_counter())
    return stamps[0] - t0, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def time_hf(hf, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """The same measurement for `transformers` `generate` (greedy, static lengths)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    t0 = time.perf_counter()
    with torch.inference_mode():
        hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                    logits_processor=LogitsProcessorList([Stamp()]))
    return stamps[0] - t0, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def measure(run: Callable[[], tuple[float, float]], repeats: int) -> tuple[Timing, Timing]:
    """(first-id latency, step time) over `repeats` runs after one warm-up."""
    run()
    firsts, steps = zip(*(run() for _ in range(repeats)))
    return Timing.of(list(firsts)), Timing.of(list(steps))


@dataclass
class Row:
    backend: str
    dtype: str
    batch: int
    first_ms: Timing
    step_ms: Timing
    prompt_len: int
    bytes_per_step: int

    @property
    def decode_tok_s(self) -> float:
        return self.batch / (self.step_ms.median / 1e3)

    @property
    def prefill_tok_s(self) -> float:
        return self.batch * self.prompt_len / (self.first_ms.median / 1e3)

    def bandwidth(self) -> float:
        return self.bytes_per_step / (self.step_ms.median / 1e3)


def _ms(t: Timing) -> Timing:
    return Timing(t.median * 1e3, t.low * 1e3, t.high * 1e3)


def bench_rows(model: Transformer, *, batches: list[int], prompt_len: int, gen_len: int,
               repeats: int, compare_hf: bool, compile: bool, hf_model=None,
               seed: int = 0) -> list[Row]:
    """Time every (backend, batch) configuration; HF runs right after ours on each batch."""
    dtype = str(model.tok_embeddings.weight.dtype).removeprefix("torch.")
    rows = []
    g = torch.Generator().manual_seed(seed)
    for batch in batches:
        prompt = torch.randint(0, model.args.vocab_size - 64, (batch, prompt_len), generator=g)
        nbytes = bytes_per_step(model, batch, prompt_len + gen_len // 2)
        model.pack_linears(batch_hint=batch)
        runs = [("omnitok", lambda p=prompt: time_engine(model, p, gen_len))]
        if compile:
            def compiled(p=prompt):
                step = compiled_decode_step(model)
                return time_engine(model, p, gen_len, step)
            runs.append(("omnitok+compile", compiled))
        if compare_hf:
            runs.append(("transformers", lambda p=prompt: time_hf(hf_model, p, gen_len)))
        for name, run in runs:
            first, step = measure(run, repeats)
            row_dtype = "float32" if name == "transformers" and hf_model.dtype == torch.float32 \
                else dtype
            rows.append(Row(name, row_dtype, batch, _ms(first), _ms(step), prompt_len, nbytes))
    return rows


def machine() -> dict:
    """Versions and the device, for benchmark headers."""
    import platform

    import omnitok

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"omnitok": omnitok.__version__, "torch": torch.__version__,
            "device": cpu, "threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def bench_generate(*, model: str = "small", batch: list[int] = (1, 8), prompt_len: int = 128,
                   gen_len: int = 128, dtype: Literal["float32", "bfloat16"] = "float32",
                   compare: Literal["hf", "none"] = "hf", compile: bool = False,
                   repeats: int = 5, vocab_size: int = 16384, threads: int | None = None,
                   seed: int = 0, json: Path | None = None) -> None:
    """Decode speed of a model preset with random weights, side by side with transformers.

    Args:
        model: model preset (debug, tiny, small, ...).
        batch: batch sizes to time.
        prompt_len: prompt ids per row.
        gen_len: generated ids per row.
        dtype: omnitok's weight dtype (transformers runs float32, its default on CPU).
        compare: `hf` also times transformers' LlamaForCausalLM.generate with the same weights.
        compile: also time omnitok with the decode step compiled (compile time printed).
        repeats: timed runs per figure (after one warm-up run).
        vocab_size: rows of the embedding and the output head.
        threads: CPU threads (default: torch's).
        seed: seed of the weights and prompts.
        json: also write the figures here.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = Transformer(ModelArgs.from_name(model, vocab_size=vocab_size)).eval()
    hf = to_hf(net) if compare == "hf" else None
    net = net.to(getattr(torch, dtype))
    packed = net.pack_linears()
    info = {**machine(), "model": model, "params": net.args.num_params(), "dtype": dtype,
            "attention": describe_backend("sdpa"), "packed_linears": packed,
            "prompt_len": prompt_len, "gen_len": gen_len, "repeats": repeats}
    copy = copy_bandwidth()
    info["copy_GBps"] = round(copy.high / 1e9, 2)
    if compile:
        t0 = time.perf_counter()
        time_engine(net, torch.zeros(1, 8, dtype=torch.long), 4,
                    compiled_decode_step(net))
        info["compile_s"] = round(time.perf_counter() - t0, 1)
    rows = bench_rows(net, batches=list(batch), prompt_len=prompt_len, gen_len=gen_len,
                      repeats=repeats, compare_hf=hf is not None, compile=compile, hf_model=hf,
                      seed=seed)
    print_table(info, rows, copy.high)
    if json is not None:
        write_json(json, info, rows, copy.high)


def _hf_ratio(row: Row, rows: list[Row]) -> float | None:
    ref = [r for r in rows if r.backend == "transformers" and r.batch == row.batch]
    return row.decode_tok_s / ref[0].decode_tok_s if ref else None


def print_table(info: dict, rows: list[Row], copy_bps: float) -> None:
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    head = (f"{'backend':<16}{'dtype':<10}{'batch':>5}{'first ms':>10}{'prefill/s':>11}"
            f"{'decode/s':>10}{'ms/step':>9}{'spread':>14}{'GB/s':>7}{'% copy':>8}{'x HF':>7}")
    print(head)
    for r in rows:
        ratio = _hf_ratio(r, rows)
        spread = f"{r.step_ms.low:.1f}-{r.step_ms.high:.1f}"
        print(f"{r.backend:<16}{r.dtype:<10}{r.batch:>5}{r.first_ms.median:>10.0f}"
              f"{r.prefill_tok_s:>11.0f}{r.decode_tok_s:>10.1f}{r.step_ms.median:>9.2f}"
              f"{spread:>14}{r.bandwidth() / 1e9:>7.1f}{100 * r.bandwidth() / copy_bps:>7.0f}%"
              f"{'' if ratio is None else f'{ratio:.2f}':>7}")


def write_json(path: Path, info: dict, rows: list[Row], copy_bps: float) -> None:
    import json as json_mod

    records = [{"backend": r.backend, "dtype": r.dtype, "batch": r.batch,
                "first_ms": asdict(r.first_ms), "step_ms": asdict(r.step_ms),
                "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s,
                "bandwidth_GBps": r.bandwidth() / 1e9,
                "copy_share": r.bandwidth() / copy_bps, "vs_hf": _hf_ratio(r, rows)}
               for r in rows]
    atomic_write_text(Path(path), json_mod.dumps({"info": info, "rows": records}, indent=2))
