"""Decode speed: omnitok's engine and `transformers` side by side, with the same weights.

`omnitok bench generate` prints, per backend and batch size: time to first id, prefill tok/s,
decode tok/s and ms/step, the memory bandwidth the decode achieves (weights + KV cache read
per step x steps/s) as a share of the machine's copy bandwidth (bytes copied per second) and
of its read bandwidth (bytes summed per second), both measured in the same process (best of
several passes over 512 MiB), and the ratio to `transformers`. Each figure is the median over
`repeats` runs after a warm-up run, with the spread (min..max) so that two runs can be
compared.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from omnitok.bench import (
    Timing,
    copy_bandwidth,
    machine,
    measure,
    read_bandwidth,
    time_call,
    write_report,
)
from omnitok.generate.engine import Engine, Guidance, Request, compiled_decode_step
from omnitok.generate.grammar import Grammar
from omnitok.generate.sampling import ModalitySampling
from omnitok.kernels import describe_backend
from omnitok.model.config import ModelArgs
from omnitok.model.export_hf import to_hf
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.vocab import AudioSpec, Vocab


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
        model.pack_linears(batch_hint=max(16, batch))
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


def build_models(preset: str, vocab_size: int, with_hf: bool, seed: int = 0):
    """A random-weight model of `preset` and (with_hf) transformers' copy of it (float32)."""
    torch.manual_seed(seed)
    net = Transformer(ModelArgs.from_name(preset, vocab_size=vocab_size)).eval()
    return net, (to_hf(net) if with_hf else None)


def bench_generate(*, model: str = "small", batch: list[int] = (1, 8), prompt_len: int = 128,
                   gen_len: int = 128, dtype: Literal["float32", "bfloat16"] = "float32",
                   compare: Literal["hf", "none"] = "hf", compile: bool = False,
                   repeats: int = 5, vocab_size: int | None = None, threads: int | None = None,
                   seed: int = 0, json: Path | None = None, plot: Path | None = None) -> None:
    """Decode speed of a model preset with random weights, side by side with transformers.

    Args:
        model: model preset (debug, tiny, small, ...).
        batch: batch sizes to time (`--batch 1 8 32` or `--batch 1,8,32`).
        prompt_len: prompt ids per row.
        gen_len: generated ids per row.
        dtype: omnitok's weight dtype (transformers runs float32, its default on CPU).
        compare: `hf` also times transformers' LlamaForCausalLM.generate with the same weights.
        compile: also time omnitok with the decode step compiled (compile time printed).
        repeats: timed runs per figure (after one warm-up run).
        vocab_size: rows of the embedding and the output head (default: the demo world's
            unified vocabulary).
        threads: CPU threads (default: torch's).
        seed: seed of the weights and prompts.
        json: also write the figures here.
        plot: also draw decode tok/s against batch size per backend into this PNG.
    """
    if threads:
        torch.set_num_threads(threads)
    vocab_size = vocab_size or media_vocab().padded_size
    net, hf = build_models(model, vocab_size, compare == "hf", seed)
    net = net.to(getattr(torch, dtype))
    info = {**machine(), "model": model, "params": net.args.num_params(), "dtype": dtype,
            "attention": describe_backend("sdpa"), "prompt_len": prompt_len,
            "gen_len": gen_len, "repeats": repeats}
    copy, read = copy_bandwidth(), read_bandwidth()  # best of the passes: the least disturbed
    info["copy_GBps"], info["read_GBps"] = round(copy.high / 1e9, 2), round(read.high / 1e9, 2)
    if compile:
        t0 = time.perf_counter()
        time_engine(net, torch.zeros(1, 8, dtype=torch.long), 4, compiled_decode_step(net))
        info["compile_s"] = round(time.perf_counter() - t0, 1)
    rows = bench_rows(net, batches=list(batch), prompt_len=prompt_len, gen_len=gen_len,
                      repeats=repeats, compare_hf=hf is not None, compile=compile, hf_model=hf,
                      seed=seed)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    print_table(rows, copy.high, read.high)
    if json is not None:
        write_report(json, {"info": info, "rows": row_records(rows, copy.high, read.high)})
    if plot is not None:
        plot_throughput(rows, plot)


def _hf_ratio(row: Row, rows: list[Row]) -> float | None:
    ref = [r for r in rows if r.backend == "transformers" and r.batch == row.batch]
    return row.decode_tok_s / ref[0].decode_tok_s if ref else None


def print_table(rows: list[Row], copy_bps: float, read_bps: float) -> None:
    """Decode rows; GB/s = bytes the decode reads per second; % copy and % read: its share of
    the copy and read bandwidths; x HF: decode tok/s over transformers' at the same batch."""
    print(f"{'backend':<16}{'dtype':<10}{'batch':>5}{'first ms':>9}{'prefill/s':>10}"
          f"{'decode/s':>9}{'ms/step':>8}{'spread':>12}{'GB/s':>6}{'%copy':>6}{'%read':>6}"
          f"{'x HF':>6}")
    for r in rows:
        ratio = _hf_ratio(r, rows)
        bw = r.bandwidth()
        print(f"{r.backend:<16}{r.dtype:<10}{r.batch:>5}{r.first_ms.median:>9.0f}"
              f"{r.prefill_tok_s:>10.0f}{r.decode_tok_s:>9.1f}{r.step_ms.median:>8.2f}"
              f"{f'{r.step_ms.low:.1f}-{r.step_ms.high:.1f}':>12}{bw / 1e9:>6.1f}"
              f"{100 * bw / copy_bps:>5.0f}%{100 * bw / read_bps:>5.0f}%"
              f"{'' if ratio is None else f'{ratio:.2f}':>6}")


def row_records(rows: list[Row], copy_bps: float, read_bps: float) -> list[dict]:
    return [{"backend": r.backend, "dtype": r.dtype, "batch": r.batch,
             "first_ms": asdict(r.first_ms), "step_ms": asdict(r.step_ms),
             "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s,
             "bandwidth_GBps": r.bandwidth() / 1e9, "copy_share": r.bandwidth() / copy_bps,
             "read_share": r.bandwidth() / read_bps, "vs_hf": _hf_ratio(r, rows)}
            for r in rows]


def plot_throughput(rows: list[Row], path: Path) -> None:
    """Decode tok/s against batch size, one line per backend and dtype."""
    from omnitok.plot import line_chart

    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(f"{r.backend} {r.dtype}", []).append((r.batch, r.decode_tok_s))
    line_chart(series, Path(path), title="decode throughput", xlabel="batch size",
               ylabel="tokens/s")


def print_media(rows: list[dict]) -> None:
    for r in rows:
        s = r["seconds"]
        extra = (f"  real time x{r['realtime_factor']:.2f} (generate {r['generate_s']:.2f} s, "
                 f"codec {r['codec_decode_s']:.2f} s)" if "realtime_factor" in r
                 else f"  {r['ids_per_s']:.0f} ids/s")
        cfg = f"cfg {r['cfg']:g}" if r["cfg"] != 1 else "no cfg"
        print(f"{r['what']:<14}{r['backend']:<14}{cfg:<9}{s['median']:>8.2f} s "
              f"[{s['low']:.2f}-{s['high']:.2f}]{extra}")


def media_vocab() -> Vocab:
    """The demo world's vocabulary shape: ~480 text pieces, 1024 image codes, 4 x 1024 audio."""
    return Vocab(text_size=480, image_size=1024,
                 audio=AudioSpec(codebook_size=1024, n_q=4, sample_rate=16000, frame_rate=50))


def time_media(model: Transformer, vocab: Vocab, target: str, *, grid: tuple[int, int],
               frames: int, cfg_scale: float, seed: int) -> float:
    """Seconds to generate one image (or `frames` audio frames) at batch 1, prompt to close."""
    grammar = Grammar(vocab, image_grid=grid, audio=True, target=target,
                      max_audio_frames=frames, min_audio_frames=frames)
    guidance = Guidance(cfg_scale) if cfg_scale != 1.0 else None
    engine = Engine(model, grammar, ModalitySampling(), guidance)
    text = vocab.range("text").start
    budget = grammar.image_cost() - 1 if target == "image" else frames * vocab.audio.n_q + 1
    state, opening = grammar.start(budget)
    uncond = [vocab.special("<bos>"), vocab.special("<uncond>")] + opening
    prompt = [vocab.special("<bos>")] + list(range(text + 10, text + 18)) + opening
    request = Request(prompt, state, uncond if guidance else None, seed)
    t0 = time.perf_counter()
    for _ in engine.run([request]):
        pass
    return time.perf_counter() - t0


def bench_media(model: Transformer, vocab: Vocab, *, repeats: int, grid: tuple[int, int] = (16, 16),
                audio_seconds: float = 2.0, cfg_scale: float = 3.0, hf_model=None) -> list[dict]:
    """Seconds per image (with and without guidance, and transformers generating the same
    number of ids: batch 2 standing for the guided pair), and audio real-time factor with the
    demo codec's decoder (random weights: speed only)."""
    from omnitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

    rows = []
    n_image = grid[0] * grid[1] + 3  # grid header, codes, <eoi>
    for scale in (1.0, cfg_scale):
        model.pack_linears()
        t = time_call(lambda s=scale: time_media(model, vocab, "image", grid=grid, frames=1,
                                                 cfg_scale=s, seed=0), repeats)
        rows.append({"what": f"image {grid[0]}x{grid[1]}", "backend": "omnitok",
                     "cfg": scale, "seconds": asdict(t), "ids_per_s": n_image / t.median})
        if hf_model is not None:
            rows_hf = 1 if scale == 1.0 else 2
            prompt = torch.randint(0, vocab.size, (rows_hf, 10))
            t = time_call(lambda p=prompt: time_hf(hf_model, p, n_image), repeats)
            rows.append({"what": f"image {grid[0]}x{grid[1]}", "backend": "transformers",
                         "cfg": scale, "seconds": asdict(t), "ids_per_s": n_image / t.median})
    codec = AudioTokenizer(AudioTokenizerConfig()).eval()
    frames = round(audio_seconds * vocab.audio.frame_rate)
    gen = time_call(lambda: time_media(model, vocab, "audio", grid=grid, frames=frames,
                                       cfg_scale=1.0, seed=0), repeats)
    codes = torch.randint(0, vocab.audio.codebook_size, (vocab.audio.n_q, frames))
    with torch.inference_mode():
        dec = time_call(lambda: codec.decode_long(codes, chunk_seconds=1.0,
                                                  context_seconds=0.5), repeats)
    total = gen.median + dec.median
    rows.append({"what": f"audio {audio_seconds:g} s", "backend": "omnitok", "cfg": 1.0,
                 "seconds": asdict(Timing(total, gen.low + dec.low, gen.high + dec.high)),
                 "generate_s": gen.median, "codec_decode_s": dec.median,
                 "realtime_factor": audio_seconds / total})
    return rows
