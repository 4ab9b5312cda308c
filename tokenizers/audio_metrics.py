"""Audio codec losses and measurements: multi-scale log-mel distance, SI-SNR, code usage, speed."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


class MultiScaleMel(nn.Module):
    """Mean L1 distance of log-mel magnitudes at several FFT sizes (hop = n_fft / 4).

    Magnitudes are floored at `floor` before the log so silence does not dominate.
    """

    def __init__(self, sample_rate: int, n_ffts: tuple[int, ...] = (256, 512, 1024, 2048),
                 n_mels: int = 64, floor: float = 1e-2) -> None:
        super().__init__()
        self.floor = floor
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n, hop_length=n // 4,
                                                 n_mels=min(n_mels, n // 8), power=1.0,
                                                 pad_mode="constant")
            for n in n_ffts)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y, x: (B, C, T) -> scalar."""
        total = 0.0
        for mel in self.mels:
            my = torch.log(mel(y.float()).clamp_min(self.floor))
            mx = torch.log(mel(x.float()).clamp_min(self.floor))
            total = total + F.l1_loss(my, mx)
        return total / len(self.mels)


def si_snr(y: torch.Tensor, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB of estimate `y` against reference `x`, over the last dim."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    target = (y * x).sum(-1, keepdim=True) / (x.pow(2).sum(-1, keepdim=True) + eps) * x
    noise = y - target
    return 10 * torch.log10(target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps) + eps)


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> list[float]:
    """Share of each level's codes that occur in (B, K, F) codes."""
    return [float(torch.unique(codes[:, k]).numel() / codebook_size)
            for k in range(codes.shape[1])]


def perplexity(codes: torch.Tensor, codebook_size: int) -> list[float]:
    """exp(entropy) of each level's code distribution in (B, K, F) codes."""
    out = []
    for k in range(codes.shape[1]):
        p = torch.bincount(codes[:, k].reshape(-1), minlength=codebook_size).float()
        p = p[p > 0] / p.sum()
        out.append(float(torch.exp(-(p * p.log()).sum())))
    return out


@torch.no_grad()
def evaluate_codec(tok, clips: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
    """Round-trip every clip (C, T): metrics and the decoded clips.

    Metrics: multi-resolution log-mel L1 distance, SI-SNR (dB), per-level usage and perplexity,
    and real-time factors (seconds of audio per second of compute) for encode and decode.
    """
    mel = MultiScaleMel(tok.sample_rate)
    enc_s = dec_s = 0.0
    outs, all_codes, dists, snrs = [], [], [], []
    for clip in clips:
        t0 = time.perf_counter()
        codes = tok.encode(clip[None].float())
        t1 = time.perf_counter()
        y = tok.decode(codes, clip.shape[-1])
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        outs.append(y[0])
        all_codes.append(codes[0])
        dists.append(float(mel(y, clip[None])))
        snrs.append(float(si_snr(y, clip[None]).mean()))
    seconds = sum(c.shape[-1] for c in clips) / tok.sample_rate
    codes = torch.cat(all_codes, dim=1)[None]
    return {"clips": len(clips), "audio_seconds": seconds,
            "mel_distance": sum(dists) / len(dists), "si_snr_db": sum(snrs) / len(snrs),
            "usage": codebook_usage(codes, tok.codebook_size),
            "perplexity": perplexity(codes, tok.codebook_size),
            "encode_rtf": seconds / enc_s, "decode_rtf": seconds / dec_s}, outs
