"""`omnitok demo`: the main job on the built-in default.

With a trained checkpoint (`--ckpt`, or the built-in default that ships in the package) the
demo draws an image, speaks a caption and captions its own image (generate/showcase.py). With
`--untrained` a model is built on the spot, in seconds:
a text tokenizer trained on the captions of the "shapes" world, a unified vocabulary with
image and audio ranges, and a randomly initialised model from a preset. The demo saves it as
a checkpoint, loads it back (validating it), runs a forward pass and generates text. The
weights are untrained, so the generated text is random words from the captions' pieces.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch

from omnitok import OmnitokError, native_bf16
from omnitok.demo.world import all_combos
from omnitok.generate.generator import GenerationSettings, Generator
from omnitok.generate.sampling import ModalitySampling, SamplingParams
from omnitok.kernels import describe_backend, resolve_backend
from omnitok.model.checkpoint import load_checkpoint, save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import Document, TextSegment
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import AudioSpec, Vocab


def captions() -> list[str]:
    """Every caption of the shapes world: "a red circle on a blue background", ..."""
    return [a.caption for a in all_combos()]


def builtin_default() -> Path | None:
    """The trained default shipped inside the package, or None while none ships."""
    path = Path(__file__).resolve().parent.parent / "default"
    return path if (path / "config.json").exists() else None


def pick_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """float32 / bfloat16; `auto` is bfloat16 on CUDA and on CPUs with native bf16 support."""
    if name != "auto":
        return getattr(torch, name)
    return torch.bfloat16 if native_bf16(device) else torch.float32


def build_default(workdir: Path, preset: str, seed: int) -> Path:
    """Train the text tokenizer, build vocabulary and model, save the checkpoint; its path."""
    corpus = workdir / "captions.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(captions()) + "\n", encoding="utf-8")
    text = TextTokenizer.train([corpus], vocab_size=300, seed=seed, progress=False)
    vocab = Vocab(text_size=text.vocab_size, image_size=1024,
                  audio=AudioSpec(codebook_size=1024, n_q=4, sample_rate=16000, frame_rate=50))
    torch.manual_seed(seed)
    model = Transformer(ModelArgs.from_name(preset, vocab_size=vocab.padded_size))
    return save_checkpoint(workdir / "checkpoint", model, TokenizerBundle(vocab, text),
                           metadata={"init": preset, "seed": seed, "trained": False})


def demo(*, out: Path = Path("out/demo"), ckpt: Path | None = None, untrained: bool = False,
         prompt: str = "a red circle on a", new_tokens: int = 24, preset: str = "debug",
         seed: int = 0, attn: Literal["sdpa", "triton", "flash"] | None = None) -> None:
    """Run the built-in default: an image, a spoken caption and a caption of the image.

    With --untrained (or where no trained default ships), a random-weight model of --preset is
    built on the spot instead, checked, and continues --prompt with random text.

    Args:
        out: folder for the generated files (and the untrained checkpoint).
        ckpt: a trained shapes-and-speech checkpoint (default: the built-in one).
        untrained: build and check a random-weight model of --preset instead.
        prompt: text prompt to continue (--untrained).
        new_tokens: number of text tokens to generate (--untrained).
        preset: model preset (debug, tiny, small, ...) of the untrained model.
        seed: seed for the weights and for sampling.
        attn: attention backend (default: triton on CUDA, sdpa on CPU; triton on CPU needs
            TRITON_INTERPRET=1).
    """
    ModelArgs.from_name(preset)  # an unknown preset fails before any work
    backend = resolve_backend(attn, "cpu")
    if untrained and ckpt is not None:
        raise OmnitokError("--untrained builds a random model; it does not take --ckpt")
    trained = None if untrained else ckpt if ckpt is not None else builtin_default()
    if trained is not None:
        from omnitok.generate.showcase import showcase

        t0 = time.perf_counter()
        print(f"backend     {describe_backend(backend, 'cpu')}")
        files = showcase(trained, out, seed=seed, backend=backend, dtype=pick_dtype("auto"))
        print(f"done        {len(files)} files in {out} ({time.perf_counter() - t0:.1f} s)")
        return
    if not prompt.strip():
        raise OmnitokError("the prompt is empty")
    t0 = time.perf_counter()
    path = build_default(out, preset, seed)
    ckpt = load_checkpoint(path, attn_backend=backend)
    model, vocab, text = ckpt.model, ckpt.vocab, ckpt.text
    t_build = time.perf_counter() - t0
    ids = [vocab.special("<bos>")] + [vocab.to_global("text", i) for i in text.encode(prompt)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))
    t_fwd = time.perf_counter() - t0
    settings = GenerationSettings(target="text", max_new_tokens=new_tokens, seed=seed,
                                  sampling=ModalitySampling(text=SamplingParams(0.8, 50)))
    t0 = time.perf_counter()
    [answer] = Generator(ckpt).generate([Document([TextSegment(prompt)])], settings)
    t_gen = time.perf_counter() - t0
    new = answer.ids
    completion = "".join(s.text for s in answer.document if isinstance(s, TextSegment))
    (out / "generated.txt").write_text(prompt + completion + "\n", encoding="utf-8")
    a = model.args
    print(f"model       {preset}: {a.num_params() / 1e6:.2f}M parameters, {a.n_layers} layers, "
          f"vocabulary {vocab.size} ids (text {vocab.text_size}, image {vocab.image_size}, "
          f"audio {vocab.audio.n_q}x{vocab.audio.codebook_size})")
    print(f"checkpoint  {path} (built, saved, reloaded in {t_build:.2f} s)")
    print(f"backend     {describe_backend(backend, 'cpu')}")
    print(f"forward     {len(ids)} tokens -> logits {tuple(logits.shape)} in {t_fwd * 1e3:.1f} ms")
    print(f"generate    {len(new)} tokens in {t_gen:.2f} s ({len(new) / t_gen:.0f} tok/s)")
    print(f"text        {prompt!r} + {completion!r}  (untrained weights: random text)")
    print(f"written     {out / 'generated.txt'}")

