"""The networks behind `AudioTokenizer`: its config, EnCodec builders, the log-mel codec, RVQ math.

Every codec here exposes the same three pieces, so the tokenizer and the trainer never branch
on the kind more than once:
    embed(wav (B, C, T)) -> (B, D, F)       T a multiple of the hop
    synthesize(emb (B, D, F)) -> (B, C, F * hop)
    quantizer                               encodec's `ResidualVectorQuantizer` (its codebooks)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
import torchaudio.functional as AF  # noqa: N812
from encodec.model import EncodecModel
from encodec.modules import SEANetDecoder, SEANetEncoder
from encodec.quantization import ResidualVectorQuantizer
from torch import nn

from omnitok import dataclass_from_dict
from omnitok.tokenizers.audio_io import AudioTokenizerError

KINDS = ("encodec", "encodec_24khz", "mel")


@dataclass
class AudioTokenizerConfig:
    """What an audio tokenizer is; `frame_rate` (codes per second) is derived.

    kind: "encodec" (a small EncodecModel we train), "encodec_24khz" (the pretrained EnCodec
    architecture) or "mel" (RVQ over stacked, normalised log-mel frames, Griffin-Lim inversion;
    meant for synthetic speech such as the demo world's, not for music or real recordings).
    """

    kind: str = "encodec"
    sample_rate: int = 16000
    channels: int = 1
    n_q: int = 4
    codebook_size: int = 1024
    # SEANet encoder / decoder (encodec kinds)
    n_filters: int = 16
    dimension: int = 64
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    n_residual_layers: int = 1
    lstm: int = 1
    causal: bool = False
    norm: str = "weight_norm"
    # log-mel codec (kind "mel")
    n_mels: int = 80
    n_fft: int = 1024
    mel_hop: int = 320
    mel_stack: int = 2  # log-mel frames per code frame: 320 x 2 samples at 16 kHz = 25 Hz
    griffin_lim_iters: int = 32
    frame_rate: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratios = tuple(int(r) for r in self.ratios)
        self._validate()
        self.frame_rate = self.sample_rate / self.hop_length

    def _validate(self) -> None:
        if self.kind not in KINDS:
            raise AudioTokenizerError(f"unknown audio tokenizer kind {self.kind!r} "
                                      f"(one of {', '.join(KINDS)})")
        ints = {"sample_rate": self.sample_rate, "channels": self.channels, "n_q": self.n_q,
                "n_filters": self.n_filters, "dimension": self.dimension, "n_mels": self.n_mels,
                "n_fft": self.n_fft, "mel_hop": self.mel_hop, "mel_stack": self.mel_stack}
        bad = [f"{k}={v}" for k, v in ints.items() if v < 1]
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            bad.append(f"codebook_size={self.codebook_size} (a power of 2 >= 2)")
        if not self.ratios or min(self.ratios) < 1:
            bad.append(f"ratios={list(self.ratios)}")
        if self.kind == "mel" and self.channels != 1:
            bad.append(f"channels={self.channels} (the mel codec is mono)")
        if bad:
            raise AudioTokenizerError(f"invalid audio tokenizer config: {', '.join(bad)}")

    @property
    def hop_length(self) -> int:
        """Samples per frame of codes."""
        return self.mel_hop * self.mel_stack if self.kind == "mel" else math.prod(self.ratios)

    @property
    def code_dim(self) -> int:
        """Dimension of the vectors the RVQ quantizes."""
        return self.n_mels * self.mel_stack if self.kind == "mel" else self.dimension

    @classmethod
    def encodec_24khz(cls, n_q: int = 32) -> AudioTokenizerConfig:
        """The architecture of `EncodecModel.encodec_model_24khz` (75 Hz, up to 32 levels)."""
        return cls(kind="encodec_24khz", sample_rate=24000, channels=1, n_q=n_q,
                   codebook_size=1024, n_filters=32, dimension=128, ratios=(8, 5, 4, 2),
                   n_residual_layers=1, lstm=2, causal=True, norm="weight_norm")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AudioTokenizerConfig:
        return dataclass_from_dict(cls, d, AudioTokenizerError, "audio tokenizer",
                                   derived=("frame_rate",))


def build_codec(config: AudioTokenizerConfig) -> nn.Module:
    """The (untrained) network for `config`."""
    return MelCodec(config) if config.kind == "mel" else EncodecCodec(config)


def _quantizer(config: AudioTokenizerConfig) -> ResidualVectorQuantizer:
    # kmeans_init=False: no 50-iteration k-means on the first forward; the trainer inits instead
    return ResidualVectorQuantizer(dimension=config.code_dim, n_q=config.n_q,
                                   bins=config.codebook_size, kmeans_init=False)


class _ExpELU(torch.autograd.Function):
    """ELU (alpha 1) as relu(x) + exp(min(x, 0)) - 1, whose gradient is exp(min(x, 0))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x.clamp(max=0))
        ctx.save_for_backward(e)
        return (e - 1).add_(x.clamp(min=0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (e,) = ctx.saved_tensors
        return grad * e  # 1 where x > 0, exp(x) elsewhere


class FastELU(nn.Module):
    """`nn.ELU()` with vectorised exp: torch's float32 expm1 on CPU runs 4-5x slower.

    Agrees with `F.elu` to 5e-8 (one float32 rounding of exp(x) - 1), value and gradient.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _ExpELU.apply(x)
        return torch.exp(x.clamp(max=0)).sub_(1).add_(x.clamp(min=0))


def set_elu(module: nn.Module, fast: bool) -> None:
    """Swap every `nn.ELU(alpha=1)` inside `module` for `FastELU` (or back): no weight changes."""
    for name, child in module.named_children():
        if fast and isinstance(child, nn.ELU) and child.alpha == 1.0:
            setattr(module, name, FastELU())
        elif not fast and isinstance(child, FastELU):
            setattr(module, name, nn.ELU())
        else:
            set_elu(child, fast)


class EncodecCodec(EncodecModel):
    """`EncodecModel` built from a config, with the embed / synthesize interface."""

    def __init__(self, config: AudioTokenizerConfig) -> None:
        kw = dict(channels=config.channels, dimension=config.dimension,
                  n_filters=config.n_filters, n_residual_layers=config.n_residual_layers,
                  ratios=list(config.ratios), norm=config.norm, causal=config.causal,
                  lstm=config.lstm)
        bits = math.log2(config.codebook_size) * config.n_q * config.frame_rate / 1000
        with warnings.catch_warnings():  # encodec uses torch's deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            encoder, decoder = SEANetEncoder(**kw), SEANetDecoder(**kw)
        set_elu(encoder, fast=True)
        set_elu(decoder, fast=True)
        super().__init__(encoder, decoder, _quantizer(config),
                         target_bandwidths=[bits], sample_rate=config.sample_rate,
                         channels=config.channels, normalize=False, segment=None,
                         name=config.kind)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encoder(wav)  # (B, C, T) -> (B, D, T / hop)

    def synthesize(self, emb: torch.Tensor) -> torch.Tensor:
        return self.decoder(emb)  # (B, D, F) -> (B, C, F * hop)


class MelCodec(nn.Module):
    """Stacked log-mel frames, normalised per dimension; pseudo-inverse mel + Griffin-Lim back."""

    def __init__(self, config: AudioTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.quantizer = _quantizer(config)
        self.register_buffer("mean", torch.zeros(config.code_dim))
        self.register_buffer("std", torch.ones(config.code_dim))
        fb = AF.melscale_fbanks(config.n_fft // 2 + 1, 0.0, config.sample_rate / 2,
                                config.n_mels, config.sample_rate)  # (n_freqs, n_mels)
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("fb_pinv", torch.linalg.pinv(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) with T a multiple of mel_hop -> (B, n_mels, T / mel_hop) natural-log mel."""
        c = self.config
        spec = torch.stft(wav[:, 0], c.n_fft, c.mel_hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True).abs()
        mel = self.fb.T @ spec[..., :-1]  # center=True gives one frame more than T / hop
        return torch.log(mel.clamp_min(1e-5))

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, n_mels * stack, T / hop), normalised."""
        m = self.log_mel(wav)
        b, n, f = m.shape
        s = self.config.mel_stack
        x = m.view(b, n, f // s, s).permute(0, 3, 1, 2).reshape(b, s * n, f // s)
        return (x - self.mean[:, None]) / self.std[:, None]

    def unembed(self, emb: torch.Tensor) -> torch.Tensor:
        """Inverse of `embed` up to the log-mel: (B, D, F) -> (B, n_mels, F * stack)."""
        x = emb * self.std[:, None] + self.mean[:, None]
        b, _, f = x.shape
        s, n = self.config.mel_stack, self.config.n_mels
        return x.view(b, s, n, f).permute(0, 2, 3, 1).reshape(b, n, f * s)

    def synthesize(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D, F) -> (B, 1, F * hop): pseudo-inverse mel filterbank, then Griffin-Lim."""
        mag = (self.fb_pinv.T @ self.unembed(emb).exp()).clamp_min(0)  # (B, n_freqs, frames)
        length = mag.shape[-1] * self.config.mel_hop
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # the frame centred on the last sample
        return self.griffin_lim(mag, length)[:, None]

    def griffin_lim(self, mag: torch.Tensor, length: int, momentum: float = 0.99) -> torch.Tensor:
        """Fast Griffin-Lim (zero initial phase, deterministic): (B, n_freqs, frames) -> (B, T)."""
        c = self.config
        stft = dict(n_fft=c.n_fft, hop_length=c.mel_hop, window=self.window, center=True)
        angles = torch.ones_like(mag, dtype=torch.complex64 if mag.dtype != torch.float64
                                 else torch.complex128)
        prev = torch.zeros_like(angles)
        alpha = momentum / (1 + momentum)
        for _ in range(c.griffin_lim_iters):
            wav = torch.istft(mag * angles, length=length, **stft)
            rebuilt = torch.stft(wav, pad_mode="constant", return_complex=True, **stft)
            angles = rebuilt - alpha * prev
            angles = angles / angles.abs().clamp_min(1e-16)
            prev = rebuilt
        return torch.istft(mag * angles, length=length, **stft)


# ---- residual vector quantization (shared by encode, decode and the trainer) -------------------
def nearest_code(x: torch.Tensor, embed: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """Index of the nearest row of `embed` (K, D) for every row of `x` (N, D): (N,) int64.

    Works on `rows` rows at a time, so memory is bounded by rows x K distances.
    """
    e2 = embed.pow(2).sum(1)[None]
    out = [(x_.pow(2).sum(1, keepdim=True) - 2 * x_ @ embed.T + e2).argmin(dim=1)
           for x_ in x.split(rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def rvq_encode(emb: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    """(B, D, F) vectors, codebooks [(K, D)] * n -> (B, n, F) codes, level by level on residuals."""
    b, d, f = emb.shape
    residual = emb.transpose(1, 2).reshape(b * f, d)
    codes = []
    for embed in books:
        idx = nearest_code(residual, embed)
        residual = residual - embed[idx]
        codes.append(idx)
    return torch.stack(codes).view(len(books), b, f).transpose(0, 1)


def rvq_decode(codes: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    """(B, n, F) codes -> (B, D, F): the sum of each level's code vectors."""
    out = sum(F.embedding(codes[:, k], books[k]) for k in range(codes.shape[1]))
    return out.transpose(1, 2)


def codebooks(codec: nn.Module) -> list[torch.Tensor]:
    """Each level's (K, D) codebook tensor (the live buffers, not copies)."""
    return [layer._codebook.embed for layer in codec.quantizer.vq.layers]
