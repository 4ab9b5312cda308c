"""Audio files in and out: read any soundfile-readable file at a codec's rate and channel count.

Policy (stated once, used everywhere):
- samples are read as float32 in [-1, 1]; rates other than the codec's are resampled with
  `torchaudio.functional.resample` (windowed sinc);
- channels: equal counts pass through; more channels than wanted are averaged to mono (and
  repeated if the codec wants 2); mono is repeated for a stereo codec;
- a file that cannot be decoded, a WAV whose header promises more samples than the file holds,
  a file with no samples and non-finite samples are refused with one `AudioTokenizerError` line
  that names the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from omnitok import OmnitokError, atomic_path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave these in the data-chunk header


class AudioTokenizerError(OmnitokError, ValueError):
    """Unreadable audio, bad codes or a tokenizer folder that disagrees with its config."""


def load_audio(path: str | os.PathLike, sample_rate: int, channels: int) -> torch.Tensor:
    """Read `path` as a float32 tensor (channels, T) at `sample_rate` (policy: module docstring)."""
    path = Path(path)
    if sample_rate < 1:
        raise AudioTokenizerError(f"sample_rate must be >= 1, got {sample_rate}")
    data, rate = _read(path)  # (T, C_in) numpy float32
    if data.shape[0] == 0:
        raise AudioTokenizerError(f"{path}: the file holds no samples (0 seconds)")
    if not np.isfinite(data).all():
        raise AudioTokenizerError(f"{path}: the file holds NaN or infinite samples")
    wav = remix(torch.from_numpy(data).T, channels)  # (C, T) view: no copy of the file
    if rate != sample_rate:
        wav = AF.resample(wav, rate, sample_rate)
    return wav.contiguous()


def _read(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise AudioTokenizerError(f"{path}: no such audio file")
    _check_wav_complete(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())
        raise AudioTokenizerError(f"{path}: not a readable audio file ({reason})") from None
    return data, int(rate)


def _check_wav_complete(path: Path) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is cut short (libsndfile reads it silently)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a WAV (or too short to be one): soundfile gives the verdict
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                held = size - offset - 8
                if chunk_size > held and chunk_size not in _UNKNOWN_SIZES:
                    raise AudioTokenizerError(
                        f"{path}: truncated WAV (header promises {chunk_size} bytes of samples, "
                        f"the file holds {held})")
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def remix(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """(C_in, T) -> (channels, T): pass through, average to mono, or repeat mono."""
    if channels < 1:
        raise AudioTokenizerError(f"channels must be >= 1, got {channels}")
    if wav.shape[0] == channels:
        return wav
    mono = wav.mean(dim=0, keepdim=True)
    return mono.expand(channels, -1).clone() if channels > 1 else mono


def save_audio(wav: torch.Tensor, sample_rate: int, path: str | os.PathLike) -> None:
    """Write (C, T) or (T,) float samples as a 16-bit PCM WAV, atomically; clips to [-1, 1]."""
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise AudioTokenizerError(f"save_audio expects (C, T) samples, got {tuple(wav.shape)}")
    data = wav.detach().float().clamp(-1, 1).cpu().numpy().T  # (T, C)
    with atomic_path(path) as tmp:
        sf.write(tmp, data, int(sample_rate), subtype="PCM_16", format="WAV")
