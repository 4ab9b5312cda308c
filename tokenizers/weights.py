"""Safetensors weights with one-line errors: shared by checkpoints and trained tokenizers.

Only safetensors and JSON are read; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from omnitok import OmnitokError, atomic_dir, read_json_object

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def read_safetensors(path: Path, error: type[Exception] = OmnitokError) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file raises `error`."""
    if not path.is_file():
        raise error(f"{path}: missing")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise error(f"{path}: corrupt or truncated safetensors file ({detail})") from None


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Size | tuple],
                source: str, error: type[Exception] = OmnitokError) -> None:
    """Raise `error` listing missing, unexpected and mis-shaped tensors of `state`."""
    problems = [f"{k}: {tuple(state[k].shape)} in the weights, {tuple(shape)} from config.json"
                for k, shape in expected.items()
                if k in state and tuple(state[k].shape) != tuple(shape)]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_some(unexpected)}")
    if problems:
        raise error(f"config.json disagrees with {source}: {_some(problems, 3)}")


def _some(items: list[str], n: int = 4) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return "; ".join(items[:n]) + more


def save_module(folder: str | os.PathLike, module: nn.Module, config: dict) -> Path:
    """Write folder/config.json + folder/model.safetensors atomically (the folder as a whole)."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def load_module_state(folder: str | os.PathLike, module: nn.Module,
                      error: type[Exception] = OmnitokError) -> None:
    """Load folder/model.safetensors into `module` after checking every tensor's shape."""
    path = Path(folder) / WEIGHTS
    state = read_safetensors(path, error)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state(state, expected, str(path), error)
    module.load_state_dict(state)


def read_config(folder: str | os.PathLike, error: type[Exception] = OmnitokError) -> dict:
    """folder/config.json as a dict (missing or malformed -> `error`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise error(f"{folder}: no such folder")
    return read_json_object(folder / CONFIG, error, "missing")
