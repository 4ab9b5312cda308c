"""The VQ image tokenizer: a convolutional autoencoder with a cosine-similarity codebook.

In the VQGAN / LlamaGen family: a conv encoder downsamples an image by `downsample` to a grid
of low-dimensional latents; each latent is l2-normalised and replaced by the codebook entry of
highest cosine similarity (factorised codes as in ViT-VQGAN); the decoder upsamples the
looked-up entries back to pixels. Training uses the straight-through estimator, a codebook +
commitment loss, and dead-code restarts (codes unused for `dead_after` training steps are
moved onto recent encoder outputs) so that the codebook is actually used.

    encode: (B, 3, H, W) float in [0, 1]  ->  (B, H/ds, W/ds) int64 codes in [0, codebook_size)
    decode: (B, h, w) int64 codes         ->  (B, 3, h*ds, w*ds) float in [0, 1]

Saved as a folder: `config.json` (the config) + `model.safetensors` (the weights).
Image file I/O (`load_image`, `save_image`, `ImageTokenizerError`) is defined in
`omnitok.tokenizers.image_io` and re-exported here.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnitok import read_json_object
from omnitok.tokenizers.image_io import ImageTokenizerError, load_image, save_image
from omnitok.tokenizers.image_vq import CosineQuantizer
from omnitok.tokenizers.weights import CONFIG, load_module_state, save_module

FORMAT = "omnitok-image-tokenizer"
VERSION = 1
__all__ = ["ImageTokenizer", "ImageTokenizerConfig", "ImageTokenizerError", "code_stats",
           "load_image", "psnr", "save_image"]


@dataclass
class ImageTokenizerConfig:
    """Sizes of the VQ autoencoder; `channel_mult` defaults to (1, 2, 4, 4, ...), one per level.

    Level i runs at resolution image_size / 2**i with `channels * channel_mult[i]` channels;
    there are log2(downsample) + 1 levels. The decoder has `n_res + 1` blocks per level.
    """

    image_size: int = 64
    downsample: int = 4
    codebook_size: int = 1024
    code_dim: int = 8
    channels: int = 16
    channel_mult: tuple[int, ...] | None = None
    n_res: int = 1
    n_mid: int = 1
    norm: str = "group"  # "group" (GroupNorm) or "none" (about 1.6x faster on CPU)
    beta: float = 0.25  # commitment weight
    dead_after: int = 200  # training steps without use before a code is restarted

    def __post_init__(self) -> None:
        if self.channel_mult is None:
            self.channel_mult = tuple(min(2**i, 4) for i in range(self.n_down + 1))
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self._validate()

    @property
    def n_down(self) -> int:
        return int(math.log2(self.downsample)) if self.downsample >= 1 else 0

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the image region one code's encoder output depends on (without
        GroupNorm, whose statistics span the whole image): small means local codes, the same
        code for the same patch wherever it lies."""
        rf, jump = 3, 1  # conv_in
        for level in range(self.n_down + 1):
            rf += 4 * jump * self.n_res  # two 3x3 convs per block
            if level < self.n_down:
                rf, jump = rf + 2 * jump, jump * 2  # strided 3x3 conv
        return rf + 4 * jump * self.n_mid

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the code grid for a configured-size image."""
        side = self.image_size // self.downsample
        return side, side

    def _validate(self) -> None:
        ds = self.downsample
        if ds < 1 or ds & (ds - 1):
            raise ImageTokenizerError(f"downsample must be a power of 2, got {ds}")
        if self.image_size < 1 or self.image_size % ds:
            raise ImageTokenizerError(f"image_size {self.image_size} is not a multiple of "
                                      f"downsample {ds}")
        if len(self.channel_mult) != self.n_down + 1:
            raise ImageTokenizerError(f"channel_mult needs {self.n_down + 1} entries for "
                                      f"downsample {ds}, got {list(self.channel_mult)}")
        small = {k: getattr(self, k) for k in ("codebook_size", "code_dim", "channels")
                 if getattr(self, k) < 1}
        if small or min(self.channel_mult) < 1 or self.n_res < 0 or self.n_mid < 0:
            raise ImageTokenizerError(f"sizes must be positive: {small or asdict(self)}")
        if self.norm not in ("group", "none"):
            raise ImageTokenizerError(f"norm must be 'group' or 'none', got {self.norm!r}")
        if self.beta < 0 or self.dead_after < 1:
            raise ImageTokenizerError("beta must be >= 0 and dead_after >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageTokenizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ImageTokenizerError(f"unknown image tokenizer config keys: {unknown}")
        try:
            return cls(**d)
        except ImageTokenizerError:
            raise
        except (TypeError, ValueError) as e:
            raise ImageTokenizerError(f"malformed image tokenizer config: {e}") from None


# ---- building blocks ------------------------------------------------------------------------
def _norm(ch: int, kind: str) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    return nn.GroupNorm(min(32, ch // 4) or 1, ch, eps=1e-6)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3, twice, plus a (1x1 projected) skip."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, norm), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, norm), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _init_conv(module: nn.Module) -> None:
    """Kaiming-normal convs with zero biases; each residual branch's last conv starts at zero.

    So every block starts as the identity and the input signal reaches the codes at full
    strength (with PyTorch's default init and no norm layers, it fades and training stalls).
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)
    elif isinstance(module, ResBlock):
        nn.init.zeros_(module.conv2.weight)


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, code_dim, H/ds, W/ds) latents (not normalised)."""

    def __init__(self, cfg: ImageTokenizerConfig) -> None:
        super().__init__()
        chs = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.n_res):
                layers.append(ResBlock(c, ch, cfg.norm))
                c = ch
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c, cfg.norm) for _ in range(cfg.n_mid)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(c, cfg.norm)
        self.conv_out = nn.Conv2d(c, cfg.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, code_dim, h, w) looked-up codes -> (B, 3, h*ds, w*ds), roughly in [-1, 1]."""

    def __init__(self, cfg: ImageTokenizerConfig) -> None:
        super().__init__()
        chs = [cfg.channels * m for m in reversed(cfg.channel_mult)]
        c = chs[0]
        self.conv_in = nn.Conv2d(cfg.code_dim, c, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(c, c, cfg.norm) for _ in range(cfg.n_mid)]
        for i, ch in enumerate(chs):
            for _ in range(cfg.n_res + 1):
                layers.append(ResBlock(c, ch, cfg.norm))
                c = ch
            if i < len(chs) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(c, c, 3, padding=1)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(c, cfg.norm)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))


# ---- the tokenizer --------------------------------------------------------------------------
class ImageTokenizer(nn.Module):
    """encode/decode images <-> (B, h, w) code grids; `forward` is the training path."""

    def __init__(self, config: ImageTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or ImageTokenizerConfig()
        c = self.config
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        self.quantizer = CosineQuantizer(c.codebook_size, c.code_dim, c.beta, c.dead_after)
        self.apply(_init_conv)

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _check_images(self, images: Tensor) -> None:
        ds = self.config.downsample
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ImageTokenizerError(f"images must be a float (B, 3, H, W) tensor, got "
                                      f"{images.dtype} {tuple(images.shape)}")
        if images.shape[2] % ds or images.shape[3] % ds or images.shape[2] == 0:
            raise ImageTokenizerError(f"image height and width must be positive multiples of "
                                      f"{ds}, got {tuple(images.shape[2:])}")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(B, 3, H, W) in [0, 1] -> (reconstruction in ~[0, 1], (B, h, w) codes, aux losses).

        The reconstruction is not clamped (so gradients flow); aux holds "codebook" and
        "commit" (already weighted by beta).
        """
        self._check_images(images)
        z = self.encoder(images * 2 - 1)
        quantized, codes, losses = self.quantizer(z)
        recon = (self.decoder(quantized.to(z.dtype)) + 1) / 2
        return recon, codes, losses

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float in [0, 1], H and W multiples of ds -> (B, H/ds, W/ds) int64."""
        self._check_images(images)
        z = self.encoder(images.to(self.codebook.device, self.codebook_dtype) * 2 - 1)
        B, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, d)
        return self.quantizer.lookup(flat).reshape(B, h, w)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """(B, h, w) integer codes in [0, codebook_size) -> (B, 3, h*ds, w*ds) float in [0, 1]."""
        self.check_codes(codes)
        q = self.quantizer.embed(codes.long().to(self.codebook.device))
        x = self.decoder(q.to(self.codebook_dtype))
        return ((x.float() + 1) / 2).clamp_(0, 1)

    def check_codes(self, codes: Tensor) -> None:
        """Raise ImageTokenizerError unless `codes` is an integer (B, h, w) grid in range."""
        if not isinstance(codes, Tensor) or codes.dim() != 3 or codes.dtype.is_floating_point \
                or codes.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ImageTokenizerError(f"codes must be an integer (B, h, w) tensor, got "
                                      f"{getattr(codes, 'dtype', type(codes))} "
                                      f"{tuple(getattr(codes, 'shape', ()))}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ImageTokenizerError(f"image codes must lie in [0, {self.codebook_size}), got "
                                      f"[{int(codes.min())}, {int(codes.max())}]")
        if 0 in codes.shape[1:]:
            raise ImageTokenizerError(f"empty code grid {tuple(codes.shape)}")

    @property
    def codebook(self) -> Tensor:
        return self.quantizer.codebook

    @property
    def codebook_dtype(self) -> torch.dtype:
        return self.quantizer.codebook.dtype

    def usage(self, codes: Tensor) -> dict[str, float]:
        """Codebook usage of a batch of codes: codes used, share used, perplexity."""
        return code_stats(codes, self.codebook_size)

    # ---- persistence --------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write folder/config.json + folder/model.safetensors atomically (replacing the folder)."""
        doc = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict()}
        return save_module(folder, self, doc)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ImageTokenizer:
        """Load and validate a saved tokenizer folder; the model is returned in eval mode."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ImageTokenizerError(f"{folder}: no such image tokenizer folder")
        config = read_config(folder / CONFIG)
        model = cls(config)
        load_module_state(folder, model, ImageTokenizerError)
        return model.eval()


def read_config(path: Path) -> ImageTokenizerConfig:
    doc = read_json_object(path, ImageTokenizerError, "missing: not an image tokenizer folder")
    if doc.get("format") != FORMAT:
        raise ImageTokenizerError(f"{path}: not an omnitok image tokenizer config")
    if doc.get("version") != VERSION:
        raise ImageTokenizerError(f"{path}: unsupported image tokenizer version "
                                  f"{doc.get('version')!r}")
    if not isinstance(doc.get("config"), dict):
        raise ImageTokenizerError(f"{path}: no 'config' object")
    try:
        return ImageTokenizerConfig.from_dict(doc["config"])
    except ImageTokenizerError as e:
        raise ImageTokenizerError(f"{path}: {e}") from None


def code_stats(codes: Tensor, codebook_size: int) -> dict[str, float]:
    """Usage of integer codes of any shape: {"used", "usage" (share), "perplexity"}.

    Perplexity is exp(entropy) of the code histogram: codebook_size for uniform use, 1 for one
    code.
    """
    counts = torch.bincount(codes.reshape(-1).long().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"used": used, "usage": used / codebook_size, "perplexity": float(entropy.exp())}


def psnr(x: Tensor, y: Tensor) -> float:
    """Mean over images of the PSNR (dB) between (B, C, H, W) tensors in [0, 1]."""
    mse = (x.float().clamp(0, 1) - y.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((-10 * mse.log10()).mean())
