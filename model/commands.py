"""`omnitok convert ...` and `omnitok model ...` subcommands."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch

from omnitok import OmnitokError
from omnitok.model.checkpoint import load_checkpoint, save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.convert_hf import convert_hf
from omnitok.model.reader import READER_DIRS
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import AudioSpec, Vocab

DType = Literal["float32", "bfloat16", "float16"]


def audio_spec(levels: int, codebook: int, sample_rate: int, frame_rate: float) -> AudioSpec | None:
    """The audio part of a vocabulary; no audio range when `levels` is 0."""
    if levels == 0:
        return None
    return AudioSpec(codebook_size=codebook, n_q=levels, sample_rate=sample_rate,
                     frame_rate=frame_rate)


def convert_hf_command(src: Path, out: Path, *, tokenizer: Path | None = None,
                       image_codebook: int = 1024, audio_levels: int = 4,
                       audio_codebook: int = 1024, audio_sample_rate: int = 24000,
                       audio_frame_rate: float = 75.0, max_seq_len: int | None = None,
                       dtype: DType | None = None) -> None:
    """Import a Hugging Face Llama-architecture model (Llama, Mistral, Qwen3) as a checkpoint.

    The model's token rows become the text range of a unified vocabulary; rows for special,
    image and audio tokens are added (initialised from the mean embedding; bos/eos copied from
    the model's own). Reads `config.json` and `*.safetensors` (sharded or not); `transformers`
    is not needed.

    Args:
        src: the Hugging Face model folder.
        out: the checkpoint folder to write.
        tokenizer: sentencepiece model or folder with `text.model`; default: `src/tokenizer.model`
            when present.
        image_codebook: image codes in the vocabulary (0: none).
        audio_levels: RVQ levels of audio in the vocabulary (0: none).
        audio_codebook: codes per RVQ level.
        audio_sample_rate: the audio codec's sample rate (EnCodec 24 kHz by default).
        audio_frame_rate: codec frames per second.
        max_seq_len: context length (default: the model's max_position_embeddings).
        dtype: weight dtype of the checkpoint (default: as stored).
    """
    audio = audio_spec(audio_levels, audio_codebook, audio_sample_rate, audio_frame_rate)
    model, vocab, text = convert_hf(src, image_size=image_codebook, audio=audio,
                                    tokenizer=tokenizer, max_seq_len=max_seq_len,
                                    dtype=getattr(torch, dtype) if dtype else None)
    if text is None:
        print("note: no sentencepiece tokenizer found; the checkpoint has no text tokenizer")
    save_checkpoint(out, model, TokenizerBundle(vocab, text),
                    metadata={"converted_from": str(src)})
    print(f"{out}: {model.args.num_params() / 1e6:.1f}M parameters, {vocab.size} ids")


def init_model(*, preset: str, out: Path, tokenizer: Path, image_codebook: int = 1024,
               audio_levels: int = 4, audio_codebook: int = 1024, audio_sample_rate: int = 16000,
               audio_frame_rate: float = 50.0, max_seq_len: int | None = None,
               seed: int = 0) -> None:
    """Create a randomly initialised checkpoint from a preset and a text tokenizer.

    Args:
        preset: model preset (debug, tiny, small, medium, large, 7b).
        out: the checkpoint folder to write.
        tokenizer: sentencepiece model or folder with `text.model`.
        image_codebook: image codes in the vocabulary (0: none).
        audio_levels: RVQ levels of audio in the vocabulary (0: none).
        audio_codebook: codes per RVQ level.
        audio_sample_rate: the audio codec's sample rate.
        audio_frame_rate: codec frames per second.
        max_seq_len: context length (default: the preset's).
        seed: random seed for the initial weights.
    """
    args = ModelArgs.from_name(preset)  # fail on a bad preset before any work
    text = TextTokenizer.load(tokenizer)
    audio = audio_spec(audio_levels, audio_codebook, audio_sample_rate, audio_frame_rate)
    vocab = Vocab(text_size=text.vocab_size, image_size=image_codebook, audio=audio)
    args = args.replace(vocab_size=vocab.padded_size, max_seq_len=max_seq_len or args.max_seq_len)
    torch.manual_seed(seed)
    model = Transformer(args)
    save_checkpoint(out, model, TokenizerBundle(vocab, text),
                    metadata={"init": preset, "seed": seed})
    print(f"{out}: {preset}, {args.num_params() / 1e6:.2f}M parameters, {vocab.size} ids")


def info(ckpt: Path) -> None:
    """Validate a checkpoint and print its configuration and vocabulary layout.

    Args:
        ckpt: the checkpoint folder.
    """
    c = load_checkpoint(ckpt)
    a = c.model.args
    print(f"checkpoint  {c.path}")
    print(f"parameters  {a.num_params() / 1e6:.2f}M ({a.num_params(embeddings=False) / 1e6:.2f}M "
          f"without embeddings), dtype {str(c.model.tok_embeddings.weight.dtype)[6:]}")
    print(f"layers      {a.n_layers} x dim {a.dim}, heads {a.n_heads} (kv {a.n_kv_heads}), "
          f"ffn {a.intermediate_size}, context {a.max_seq_len}, qk_norm {a.qk_norm}, "
          f"tied {a.tie_embeddings}, 2-D image positions {a.image_positions is not None}")
    print(f"text        {c.text.vocab_size if c.text else 'no'} tokenizer pieces")
    if c.vocab.audio:
        au = c.vocab.audio
        print(f"audio       {au.n_q} levels x {au.codebook_size} codes, {au.sample_rate} Hz, "
              f"{au.frame_rate} frames/s")
    print(c.vocab.describe())
    if not torch.isfinite(c.model.tok_embeddings.weight).all():
        raise OmnitokError(f"{ckpt}: the embedding holds NaN or inf values")


def export(ckpt: Path, out: Path, *, dtype: DType = "bfloat16") -> None:
    """Write a checkpoint for shipping: the model weights in `dtype`, the tokenizers, the
    readers (caption and speech) where the checkpoint has them, nothing of the training state (optimizer,
    data position).

    Args:
        ckpt: the checkpoint folder (a training run's `last` or a step folder).
        out: the folder to write (replaced atomically).
        dtype: dtype of the model weights.
    """
    c = load_checkpoint(ckpt, dtype=getattr(torch, dtype))
    if Path(out).resolve() == Path(ckpt).resolve():
        raise OmnitokError(f"{out}: choose a folder other than the source checkpoint")
    save_checkpoint(out, c.model, c.tokenizers, metadata={"exported_from": str(ckpt),
                                                          "dtype": dtype})
    for name in READER_DIRS.values():  # the readers travel with their checkpoint
        if (Path(ckpt) / name).is_dir():
            shutil.copytree(Path(ckpt) / name, Path(out) / name)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"{out}: {c.model.args.num_params() / 1e6:.2f}M parameters in {dtype}, "
          f"{size / 2**20:.1f} MiB in all")
