"""`ModelArgs`: the one configuration of the decoder transformer, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from omnitok import OmnitokError, dataclass_from_dict


class ConfigError(OmnitokError, ValueError):
    """A model configuration that cannot be built."""


@dataclass
class RopeScaling:
    """Llama-3 style frequency scaling of RoPE (`rope_scaling.rope_type == "llama3"`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


# (row, column) offsets of the neighbours whose codebook vectors an image code's input takes
# with `ModelArgs.image_neighbours` (model/image_positions.py): all earlier in raster order
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (-1, 2), (0, -1))
SUMMARIES = ("pool", "cnn")  # what the image reader passes to an image's <eoi>


@dataclass
class ImagePositions:
    """Learned row and column embeddings added to the input of every image code.

    The ids that locate an image in a stream (tokenizers/document.py): `boi` opens a segment,
    the two ids after it are grid tokens (`grid_start` means a side of 1), then come h*w code
    ids in [code_start, code_stop) in raster order. Sides up to `max_side` are embedded.
    """

    boi: int
    grid_start: int
    code_start: int
    code_stop: int
    max_side: int

    def __post_init__(self) -> None:
        if min(self.boi, self.grid_start, self.code_start) < 0 or self.max_side < 1:
            raise ConfigError("image_positions: ids must be >= 0 and max_side >= 1")
        if self.code_stop <= self.code_start:
            raise ConfigError(f"image_positions: empty code range [{self.code_start}, "
                              f"{self.code_stop})")


@dataclass
class ImageNeighbours:
    """A local reader of the image grid: the image tokenizer's codebook vectors (`code_dim`
    wide, a frozen copy in the model) of each code and of its `NEIGHBOURS`, side by side,
    through a `hidden`-wide SiLU MLP, added to the code's input; and a summary of the whole
    image, through a map of its own, added to the input of the id after the image (its
    <eoi>). `summary` says what is summarised: `pool`, the maximum of each hidden unit over
    the image's codes; `cnn`, three 3x3 convolutions (`summary_width` channels) over the
    image's grid of codebook vectors, max-pooled (weights of its own, which only the ids
    after an image train)."""

    code_dim: int
    hidden: int = 256
    summary: str = "pool"
    summary_width: int = 64

    def __post_init__(self) -> None:
        if self.code_dim < 1 or self.hidden < 1 or self.summary_width < 1:
            raise ConfigError("image_neighbours: code_dim, hidden and summary_width must be "
                              ">= 1")
        if self.summary not in SUMMARIES:
            raise ConfigError(f"image_neighbours: unknown summary {self.summary!r}; choose "
                              f"from {', '.join(SUMMARIES)}")

    @property
    def summary_size(self) -> int:
        """Width of the summary a decode step passes at an <eoi>."""
        return self.hidden if self.summary == "pool" else self.summary_width

    @property
    def width(self) -> int:
        """The MLP's input: the code and its neighbours."""
        return (1 + len(NEIGHBOURS)) * self.code_dim


@dataclass
class ModelArgs:
    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (no GQA)
    head_dim: int | None = None  # None: dim // n_heads
    intermediate_size: int | None = None  # None: ~8/3 * dim, rounded up to multiple_of
    multiple_of: int = 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Chameleon-style stability)
    tie_embeddings: bool = False
    z_loss: float = 0.0  # default weight of the z-loss (log Z)^2 term used by training
    init_std: float = 0.02
    image_positions: ImagePositions | None = None  # None: image codes get 1-D RoPE only
    image_neighbours: ImageNeighbours | None = None  # None: no local reader of image grids

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if isinstance(self.image_positions, dict):
            self.image_positions = ImagePositions(**self.image_positions)
        if isinstance(self.image_neighbours, dict):
            self.image_neighbours = ImageNeighbours(**self.image_neighbours)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.intermediate_size is None:
            hidden = int(2 * 4 * self.dim / 3)
            self.intermediate_size = -(-hidden // self.multiple_of) * self.multiple_of
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "intermediate_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads "
                              f"{self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        pos = self.image_positions
        if pos is not None and max(pos.boi, pos.grid_start + pos.max_side - 1,
                                   pos.code_stop - 1) >= self.vocab_size:
            raise ConfigError(f"image_positions: ids beyond vocab_size {self.vocab_size}")
        if self.image_neighbours is not None and pos is None:
            raise ConfigError("image_neighbours needs image_positions (the layout of images)")

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelArgs:
        """A preset (`debug`, `tiny`, `small`, `medium`, `large`, `7b`) with fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        return dataclass_from_dict(cls, d, ConfigError, "model")

    def replace(self, **changes) -> ModelArgs:
        return dataclasses.replace(self, **changes)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count implied by the config (tied weights counted once)."""
        attn = self.dim * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        attn += self.n_heads * self.head_dim * self.dim
        block = attn + 3 * self.dim * self.intermediate_size + 2 * self.dim
        block += 2 * self.head_dim if self.qk_norm else 0
        n = self.n_layers * block + self.dim
        if embeddings:
            n += self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
            if self.image_positions is not None:  # row and column tables
                n += 2 * (self.image_positions.max_side + 1) * self.dim
            near = self.image_neighbours
            if near is not None:  # the MLP (the codebook copy is a buffer, not a parameter)
                n += near.hidden * (near.width + self.dim)
                n += near.summary_size * self.dim  # the summary's map
                if near.summary == "cnn":
                    c = near.summary_width
                    n += 9 * c * (near.code_dim + 2 * c) + 3 * c
        return n


PRESETS: dict[str, dict] = {
    # for tests: a few thousand parameters, GQA, every code path
    "debug": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=160,
                  max_seq_len=512),
    # CPU demos: ~3.0M parameters without embeddings
    "tiny": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, intermediate_size=704,
                 max_seq_len=1024),
    # ~76M parameters without embeddings (GPT-2 small sized)
    "small": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, intermediate_size=2048,
                  max_seq_len=2048),
    "medium": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=4, intermediate_size=2816,
                   max_seq_len=4096, qk_norm=True),
    # Llama-3.2-1B shaped
    "large": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, intermediate_size=8192,
                  max_seq_len=8192, rope_theta=500000.0, qk_norm=True),
    # Llama-2-7B shaped
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, intermediate_size=11008,
               max_seq_len=4096),
}
