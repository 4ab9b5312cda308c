"""`TrainConfig`: every setting of a training run, saved as `train.json` in the run folder.

A resumed run must agree with the saved settings that decide what it computes (the model, the
data and its order, the batch, the optimizer); `max_steps` (the cosine's length), checkpointing,
logging and speed switches may change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnitok import OmnitokError, atomic_write_text, dataclass_from_dict, read_json_object
from omnitok.model.config import SUMMARIES
from omnitok.train.mix import parse_mix

PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed"}
STRATEGIES = ("auto", "ddp", "fsdp")
WEIGHT_KEYS = ("text", "image", "audio", "special", "condition")  # LossWeights' scalar fields
# settings a resumed run must share with the run it continues
RESUME_KEYS = ("mix", "seq_len", "batch_size", "accumulate", "seed", "condition_dropout",
               "modality_dropout", "dropout_kinds", "loss_weights", "audio_levels", "freeze",
               "world_size", "window", "image_positions", "image_neighbours", "image_summary",
               "lr", "min_lr",
               "warmup_steps", "weight_decay", "beta1", "beta2")


class TrainConfigError(OmnitokError, ValueError):
    """A training setting out of range, or one that contradicts the run being resumed."""


@dataclass
class TrainConfig:
    data: str
    out: str
    mix: list[str] = field(default_factory=list)  # more shard folders, "FOLDER:REPEATS"
    model: str | None = None  # preset; None: from `init`, else "tiny"
    init: str | None = None  # omnitok checkpoint to start from
    tokenizer: str | None = None  # tokenizer folder saved with every checkpoint
    resume: bool = False  # continue from out/'s last checkpoint
    max_steps: int = 1000
    batch_size: int = 8  # rows per device per micro-batch
    seq_len: int = 512
    accumulate: int = 1
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    z_loss: float | None = None  # None: the model config's
    precision: str = "32"
    compile: bool = False
    activation_checkpointing: bool = False
    freeze: list[str] = field(default_factory=list)
    codebook_init: bool = False  # media embeddings of a fresh model from their codebooks
    image_positions: bool = False  # add row/column embeddings of image codes (2-D positions)
    image_neighbours: bool = False  # add each image code's neighbours (implies image_positions)
    image_summary: str = "pool"  # what the image reader passes to an image's <eoi>: pool, cnn
    condition_dropout: float = 0.0
    modality_dropout: float = 0.0
    dropout_kinds: list[str] = field(default_factory=lambda: ["text", "image", "audio"])
    loss_weights: dict[str, float] = field(default_factory=dict)  # WEIGHT_KEYS
    audio_levels: list[float] = field(default_factory=list)
    seed: int = 0
    window: int = 256
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    workers: int = 0
    threads: int | None = None
    progress: bool = True
    attn: str | None = None
    val_data: str | None = None  # held-out shard folder scored during training
    val_every: int = 250
    val_rows: int = 64

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "accumulate", "checkpoint_every", "log_every",
                    "devices", "num_nodes", "keep_checkpoints", "window", "val_every",
                    "val_rows")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                       f"{getattr(self, name)}")
        if self.seq_len < 2:
            raise TrainConfigError(f"--seq-len must be >= 2, got {self.seq_len}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise TrainConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, "
                                   f"min_lr={self.min_lr}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"--precision {self.precision!r}: choose from "
                                   f"{', '.join(PRECISIONS)}")
        if self.image_summary not in SUMMARIES:
            raise TrainConfigError(f"--image-summary {self.image_summary!r}: choose from "
                                   f"{', '.join(SUMMARIES)}")
        if self.strategy not in STRATEGIES:
            raise TrainConfigError(f"--strategy {self.strategy!r}: choose from "
                                   f"{', '.join(STRATEGIES)}")
        unknown = sorted(set(self.loss_weights) - set(WEIGHT_KEYS))
        if unknown:
            raise TrainConfigError(f"unknown loss weights {unknown}: {', '.join(WEIGHT_KEYS)}")
        for entry in self.mix:
            parse_mix(entry)
        if self.warmup_steps < 0 or self.workers < 0 or self.grad_clip < 0:
            raise TrainConfigError("--warmup-steps, --workers and --grad-clip must be >= 0")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def to_dict(self) -> dict:
        return {**asdict(self), "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return dataclass_from_dict(cls, d, TrainConfigError, "training", derived=("world_size",))

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def save_config(config: TrainConfig, path: Path, model_args: dict) -> None:
    """Write the run's settings and its model configuration to `path` (JSON)."""
    text = json.dumps({"train": config.to_dict(), "model": model_args}, indent=1)
    atomic_write_text(path, text + "\n")


def check_resume(config: TrainConfig, path: Path, model_args: dict) -> None:
    """Raise TrainConfigError naming the first setting that differs from the saved run."""
    saved = read_json_object(path, TrainConfigError)
    old, new = saved.get("train", {}), config.to_dict()
    defaults = asdict(TrainConfig(data="", out=""))  # for settings older runs did not save
    for key in RESUME_KEYS:
        if old.get(key, defaults.get(key)) != new.get(key):
            raise TrainConfigError(f"{path.parent} was trained with {key}={old.get(key)!r}, "
                                   f"not {new.get(key)!r}; use the same setting to resume")
    if saved.get("model") != model_args:
        diff = sorted(k for k in model_args if saved.get("model", {}).get(k) != model_args[k])
        raise TrainConfigError(f"{path.parent} was trained with another model "
                               f"({', '.join(diff)} differ)")
