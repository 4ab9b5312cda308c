"""Checkpoints: a folder with `model.safetensors`, `config.json` and a tokenizer bundle
(`vocab.json`, `text.model`, `image/`, `audio/`: see tokenizers/bundle.py).

Writes are atomic (the folder is assembled beside its destination, then renamed into place).
Loading checks every tensor against the config and names exactly what disagrees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from omnitok import OmnitokError, atomic_dir, read_json_object
from omnitok.model.config import ConfigError, ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import VOCAB, TokenizerBundle
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import Vocab
from omnitok.tokenizers.weights import CONFIG, WEIGHTS, check_state, read_safetensors

FORMAT = "omnitok-checkpoint"
VERSION = 1


class CheckpointError(OmnitokError):
    """A checkpoint folder that is missing, corrupt, or inconsistent with itself."""


@dataclass
class Checkpoint:
    model: Transformer
    tokenizers: TokenizerBundle
    path: Path

    @property
    def vocab(self) -> Vocab:
        return self.tokenizers.vocab

    @property
    def text(self) -> TextTokenizer | None:
        return self.tokenizers.text


def save_checkpoint(folder: str | os.PathLike, model: Transformer, tokenizers: TokenizerBundle,
                    metadata: dict | None = None) -> Path:
    """Write `folder` atomically; an existing checkpoint there is replaced only on success."""
    vocab = tokenizers.vocab
    if model.args.vocab_size != vocab.padded_size:
        raise CheckpointError(f"model vocab_size {model.args.vocab_size} does not match the "
                              f"vocabulary's padded size {vocab.padded_size}")
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(weights_to_save(model), tmp / WEIGHTS, metadata={"format": "pt"})
        config = {"format": FORMAT, "version": VERSION, "model": model.args.to_dict(),
                  "dtype": str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
                  "metadata": metadata or {}}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizers.save(tmp)
    return folder


def weights_to_save(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict without the tied output head (safetensors refuses shared storage)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        state.pop("output.weight")
    return state


def read_config(folder: str | os.PathLike) -> ModelArgs:
    path = Path(folder) / CONFIG
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    config = read_json_object(path, CheckpointError, "missing: not an omnitok checkpoint")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an omnitok checkpoint config")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {config.get('version')}")
    try:
        return ModelArgs.from_dict(config["model"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def check_weights(state: dict[str, torch.Tensor], model: Transformer, source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors."""
    expected = {k: v.shape for k, v in weights_to_save(model).items()}
    check_state(state, expected, source, CheckpointError)


def model_from_state(args: ModelArgs, state: dict[str, torch.Tensor], source: str,
                     attn_backend: str = "sdpa") -> Transformer:
    """A model that uses the tensors of `state` in place, after checking them against `args`."""
    with torch.device("meta"):
        model = Transformer(args, attn_backend=attn_backend)
    check_weights(state, model, source)
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.reset_rope()
    return model


def load_checkpoint(folder: str | os.PathLike, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, attn_backend: str = "sdpa") -> Checkpoint:
    """Load and validate a checkpoint folder; the model is returned in eval mode."""
    folder = Path(folder)
    args = read_config(folder)
    if not (folder / VOCAB).exists():
        raise CheckpointError(f"{folder / VOCAB}: missing")
    tokenizers = TokenizerBundle.load(folder)
    vocab = tokenizers.vocab
    if vocab.padded_size != args.vocab_size:
        raise CheckpointError(f"{folder}: vocab.json has {vocab.padded_size} ids (padded) but "
                              f"config.json says vocab_size={args.vocab_size}")
    state = read_safetensors(folder / WEIGHTS, CheckpointError)
    model = model_from_state(args, state, str(folder / WEIGHTS), attn_backend)
    model.to(device=device, dtype=dtype)
    return Checkpoint(model=model.eval(), tokenizers=tokenizers, path=folder)
