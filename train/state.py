"""Training checkpoints: an omnitok checkpoint folder plus what resuming needs.

    RUN/checkpoints/step-00000100/   one folder, written beside its place and renamed into it
        model.safetensors, config.json, vocab.json, text.model, ...   (model/checkpoint.py)
        trainer.json                 step, data position ({"epoch", "row"}), tokens, seconds
        optimizer.pt                 {"optimizer": AdamW state, "scheduler": LR schedule state}
    RUN/last -> checkpoints/step-00000100   (a symbolic link, replaced atomically)

`optimizer.pt` holds only tensors, numbers and strings, and is read with
`torch.load(weights_only=True)`: nothing is unpickled. Every folder is an ordinary omnitok
checkpoint: `load_checkpoint`, `omnitok model info` and `omnitok train --init` read it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from omnitok import OmnitokError, atomic_dir, read_json_object
from omnitok.model.checkpoint import CheckpointError, model_from_state, save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.tokenizers.bundle import TokenizerBundle

CHECKPOINTS, LAST, TRAINER, OPTIMIZER = "checkpoints", "last", "trainer.json", "optimizer.pt"


class TrainStateError(OmnitokError):
    """A training checkpoint that is incomplete or unreadable."""


@dataclass
class TrainState:
    """Where a run stands after `step` optimizer steps."""

    step: int = 0
    data: dict | None = None  # {"epoch", "row"}: the next row of the data order
    tokens: int = 0  # target tokens trained on (all ranks)
    seconds: float = 0.0  # training time so far

    def to_dict(self) -> dict:
        return {"step": self.step, "data": self.data, "tokens": self.tokens,
                "seconds": self.seconds}


def step_folder(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:08d}"


def save_train_checkpoint(run: Path, state: TrainState, args: ModelArgs,
                          weights: dict[str, torch.Tensor], tokenizers: TokenizerBundle,
                          optimizer: dict, metadata: dict, keep: int) -> Path:
    """Write step folder `state.step` as a whole, point `RUN/last` at it, and delete all but
    the newest `keep` step folders. `weights`: the model's full state dict."""
    folder = step_folder(run, state.step)
    model = model_from_state(args, _untied(weights, args), "training state")
    with atomic_dir(folder) as tmp:
        save_checkpoint(tmp, model, tokenizers, {**metadata, "step": state.step})
        torch.save(optimizer, tmp / OPTIMIZER)
        (tmp / TRAINER).write_text(json.dumps(state.to_dict(), indent=1) + "\n",
                                   encoding="utf-8")
    _point_last(run, folder)
    for old in checkpoint_folders(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _untied(weights: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in weights.items()}
    if args.tie_embeddings:
        state.pop("output.weight", None)
    return state


def _point_last(run: Path, folder: Path) -> None:
    link = Path(run) / LAST
    tmp = link.with_name(f".{LAST}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(folder.relative_to(run), tmp)
    os.replace(tmp, link)


def checkpoint_folders(run: Path) -> list[Path]:
    """Finished step folders of a run, oldest first."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / TRAINER).is_file()]
    return sorted(done, key=lambda p: p.name)


def latest_checkpoint(run: Path) -> Path | None:
    folders = checkpoint_folders(run)
    return folders[-1] if folders else None


def load_train_state(folder: Path) -> tuple[TrainState, dict]:
    """(TrainState, {"optimizer", "scheduler"}) of a step folder."""
    info = read_json_object(folder / TRAINER, TrainStateError)
    try:
        state = TrainState(int(info["step"]), info.get("data"), int(info.get("tokens", 0)),
                           float(info.get("seconds", 0.0)))
        optimizer = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    except (KeyError, TypeError, ValueError) as e:
        raise TrainStateError(f"{folder}: unreadable training state ({e})") from None
    except (OSError, RuntimeError) as e:
        raise TrainStateError(f"{folder / OPTIMIZER}: unreadable ({e})") from None
    if not isinstance(optimizer, dict) or "optimizer" not in optimizer:
        raise TrainStateError(f"{folder / OPTIMIZER}: not an omnitok optimizer state")
    return state, optimizer


def check_checkpoint_vocab(folder: Path, tokenizers: TokenizerBundle, vocab) -> None:
    """Raise CheckpointError when a checkpoint's vocabulary is not the data's."""
    if tokenizers.vocab != vocab:
        raise CheckpointError(f"{folder}: its vocabulary ({tokenizers.vocab.size} ids) is not "
                              f"the one the shards were made with ({vocab.size} ids)")
