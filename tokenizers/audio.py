"""The audio tokenizer: waveform (B, C, T) <-> RVQ codes (B, K, F), K levels of `codebook_size`.

Kinds (see `AudioTokenizerConfig`): a small EnCodec we train ("encodec"), the pretrained EnCodec
24 kHz model loaded from a checkpoint on disk ("encodec_24khz"), and RVQ over log-mel frames with
Griffin-Lim inversion ("mel", for synthetic speech). Durations that are not a multiple of the hop
are zero-padded on encode; `decode(codes, length)` trims back. Saved as a folder with
`config.json` and `model.safetensors`; nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omnitok import read_json_object
from omnitok.tokenizers.audio_codecs import (
    AudioTokenizerConfig,
    build_codec,
    codebooks,
    rvq_decode,
    rvq_encode,
)
from omnitok.tokenizers.audio_io import AudioTokenizerError, load_audio, save_audio
from omnitok.tokenizers.vocab import AudioSpec
from omnitok.tokenizers.weights import CONFIG, WEIGHTS, check_state, read_safetensors, save_module

__all__ = ["AudioTokenizer", "AudioTokenizerConfig", "AudioTokenizerError", "load_audio",
           "save_audio"]

FORMAT = "omnitok-audio-tokenizer"
VERSION = 1
PRETRAINED_24KHZ = "encodec_24khz-*.th"


class AudioTokenizer(nn.Module):
    """Encode waveforms to RVQ codes and decode codes back; see the module docstring."""

    def __init__(self, config: AudioTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.codec = build_codec(config)

    # ---- what the codes mean ------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def spec(self) -> AudioSpec:
        c = self.config
        return AudioSpec(codebook_size=c.codebook_size, n_q=c.n_q, sample_rate=c.sample_rate,
                         frame_rate=c.frame_rate, channels=c.channels)

    def codebooks(self) -> list[torch.Tensor]:
        return codebooks(self.codec)

    # ---- encode / decode ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """(B, C, T) float samples at `sample_rate` -> (B, n_q, ceil(T / hop)) int64 codes."""
        wav = self._check_wav(wav)
        emb = self.embed(wav)
        return rvq_encode(emb.float(), self.codebooks()[: self._levels(n_q)])

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, D, ceil(T / hop)) unquantized vectors (zero-pads T to the hop)."""
        frames = -(-wav.shape[-1] // self.hop_length)
        wav = F.pad(wav, (0, frames * self.hop_length - wav.shape[-1]))
        return self.codec.embed(wav)[..., :frames]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(B, K, F) codes, 1 <= K <= n_q -> (B, C, F * hop) samples, or `length` if given."""
        codes = self._check_codes(codes)
        emb = rvq_decode(codes, self.codebooks())
        wav = self.codec.synthesize(emb)
        if length is not None:
            if not 0 <= length <= wav.shape[-1]:
                raise AudioTokenizerError(f"length {length} is outside [0, {wav.shape[-1]}] for "
                                          f"{codes.shape[-1]} frames of {self.hop_length} samples")
            wav = wav[..., :length]
        return wav

    def _levels(self, n_q: int | None) -> int:
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise AudioTokenizerError(f"n_q must lie in [1, {self.n_q}], got {n_q}")
        return n_q

    def _check_wav(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor) or wav.dim() != 3:
            shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
            raise AudioTokenizerError(f"encode expects a (B, C, T) float tensor, got {shape}")
        if not wav.dtype.is_floating_point:
            raise AudioTokenizerError(f"encode expects float samples, got {wav.dtype}")
        if wav.shape[1] != self.channels:
            raise AudioTokenizerError(f"this codec takes {self.channels} channel(s), got "
                                      f"{wav.shape[1]} (load_audio remixes files)")
        if wav.shape[-1] == 0 or wav.shape[0] == 0:
            raise AudioTokenizerError(f"cannot encode empty audio of shape {tuple(wav.shape)}")
        book = self.codebooks()[0]
        return wav.to(device=book.device, dtype=book.dtype)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise AudioTokenizerError(f"decode expects (B, K, F) integer codes, got {shape}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise AudioTokenizerError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.n_q:
            raise AudioTokenizerError(f"codes have {codes.shape[1]} levels; this codec has "
                                      f"1 to {self.n_q}")
        if codes.shape[-1] == 0 or codes.shape[0] == 0:
            raise AudioTokenizerError(f"cannot decode empty codes of shape {tuple(codes.shape)}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise AudioTokenizerError(f"codes must lie in [0, {self.codebook_size}), got "
                                      f"[{lo}, {hi}]")
        return codes.long().to(self.codebooks()[0].device)

    # ---- long inputs --------------------------------------------------------------------------
    def chunk_frames(self, chunk_seconds: float, context_seconds: float) -> tuple[int, int]:
        """(frames per chunk, frames of context on each side) for chunked encode/decode."""
        if chunk_seconds <= 0 or context_seconds < 0:
            raise AudioTokenizerError("chunk_seconds must be > 0 and context_seconds >= 0")
        return max(1, round(chunk_seconds * self.frame_rate)), math.ceil(
            context_seconds * self.frame_rate)

    def chunk_windows(self, frames: int, chunk_seconds: float, context_seconds: float):
        """(start, stop, a, b) frame windows: keep [start, stop) out of a computed [a, b).

        A window whose b is below `frames` depends only on codes before b: streaming decoders
        emit it as soon as those frames exist and get what a whole-segment decode gives.
        """
        chunk, ctx = self.chunk_frames(chunk_seconds, context_seconds)
        for start in range(0, frames, chunk):
            stop = min(frames, start + chunk)
            yield start, stop, max(0, start - ctx), min(frames, stop + ctx)

    def decode_window(self, codes: torch.Tensor, window: tuple[int, int, int, int]
                      ) -> torch.Tensor:
        """(C, (stop - start) * hop) samples of frames [start, stop), decoded from [a, b)."""
        start, stop, a, b = window
        hop = self.hop_length
        return self.decode(codes[None, :, a:b])[0, :, (start - a) * hop: (stop - a) * hop]

    def encode_long(self, wav: torch.Tensor, chunk_seconds: float = 10.0,
                    context_seconds: float = 1.0) -> torch.Tensor:
        """(C, T) -> (n_q, ceil(T / hop)) codes with memory bounded by the chunk, not by T.

        Chunks are cut at frame boundaries; each is encoded with `context_seconds` of the
        neighbouring audio on both sides, whose frames are then dropped, so codes near a cut
        see (almost) the context they would see in one pass. Work per call: chunk + 2 contexts.
        """
        if not isinstance(wav, torch.Tensor) or wav.dim() != 2:
            raise AudioTokenizerError("encode_long expects (C, T) samples")
        hop, frames = self.hop_length, -(-wav.shape[-1] // self.hop_length)
        wav = F.pad(wav, (0, frames * hop - wav.shape[-1]))
        out = [self.encode(wav[None, :, a * hop: b * hop])[0, :, start - a: stop - a]
               for start, stop, a, b in self.chunk_windows(frames, chunk_seconds, context_seconds)]
        if not out:
            raise AudioTokenizerError("cannot encode empty audio (0 samples)")
        return torch.cat(out, dim=1)

    def decode_long(self, codes: torch.Tensor, length: int | None = None,
                    chunk_seconds: float = 10.0, context_seconds: float = 1.0) -> torch.Tensor:
        """(K, F) codes -> (C, F * hop) samples (or `length`), chunked like `encode_long`."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise AudioTokenizerError("decode_long expects (K, F) codes")
        out = [self.decode_window(codes, w)
               for w in self.chunk_windows(codes.shape[1], chunk_seconds, context_seconds)]
        if not out:
            raise AudioTokenizerError("cannot decode empty codes (0 frames)")
        wav = torch.cat(out, dim=1)
        return wav if length is None else wav[:, :length]

    def encode_file(self, path: str | os.PathLike, **kw) -> torch.Tensor:
        """An audio file (any rate, any channels) -> (n_q, F) codes."""
        return self.encode_long(load_audio(path, self.sample_rate, self.channels), **kw)

    def decode_file(self, codes: torch.Tensor, path: str | os.PathLike,
                    length: int | None = None) -> None:
        """(K, F) codes -> a 16-bit WAV at `path`."""
        save_audio(self.decode_long(codes, length), self.sample_rate, path)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write `folder`/config.json and `folder`/model.safetensors atomically."""
        config = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                  "metadata": metadata or {}}
        return save_module(folder, self.codec, config)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AudioTokenizer:
        """A tokenizer saved by `save`, checked tensor by tensor against its config."""
        folder = Path(folder)
        if not folder.is_dir():
            raise AudioTokenizerError(f"{folder}: no such audio tokenizer folder")
        d = read_json_object(folder / CONFIG, AudioTokenizerError,
                             "missing: not an omnitok audio tokenizer")
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise AudioTokenizerError(f"{folder / CONFIG}: not an omnitok audio tokenizer config "
                                      f"(format {d.get('format')!r}, version {d.get('version')!r})")
        tok = cls(AudioTokenizerConfig.from_dict(d.get("config") or {}))
        tok.load_weights(read_safetensors(folder / WEIGHTS, AudioTokenizerError),
                         str(folder / WEIGHTS))
        return tok.eval()

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy `state` into the codec after checking every name and shape against the config."""
        expected = {k: v.shape for k, v in self.codec.state_dict().items()}
        check_state(state, expected, source, AudioTokenizerError)
        self.codec.load_state_dict(state)

    @classmethod
    def from_pretrained_24khz(cls, path: str | os.PathLike | None = None,
                              n_q: int = 32) -> AudioTokenizer:
        """The pretrained EnCodec 24 kHz model from a checkpoint file on disk; never downloads.

        `path` defaults to the torch hub cache (<hub dir>/checkpoints/encodec_24khz-*.th).
        `n_q` keeps the first levels (75 Hz x 10 bits each: 8 levels = 6 kbps, 32 = 24 kbps).
        """
        path = Path(path) if path is not None else _hub_checkpoint()
        if not path.is_file():
            raise AudioTokenizerError(f"{path}: no such EnCodec 24 kHz checkpoint (omnitok never "
                                      "downloads; fetch encodec_24khz-d7cc33bc.th yourself)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            reason = " ".join(str(e).split())[:200]
            raise AudioTokenizerError(f"{path}: not a loadable EnCodec checkpoint ({reason})") \
                from None
        if not isinstance(state, dict):
            raise AudioTokenizerError(f"{path}: expected a state dict, got {type(state).__name__}")
        tok = cls(AudioTokenizerConfig.encodec_24khz(n_q))
        tok.load_weights(_first_levels(state, n_q), str(path))
        return tok.eval()

    def with_levels(self, n_q: int) -> AudioTokenizer:
        """A copy that keeps only the first `n_q` RVQ levels (fewer tokens, lower bandwidth)."""
        tok = AudioTokenizer(dataclasses.replace(self.config, n_q=self._levels(n_q)))
        tok.load_weights(_first_levels(self.codec.state_dict(), n_q), "the original codec")
        return tok.train(self.training)


def _first_levels(state: dict[str, torch.Tensor], n_q: int) -> dict[str, torch.Tensor]:
    """`state` without the tensors of quantizer levels >= n_q."""
    keep = tuple(f"quantizer.vq.layers.{k}." for k in range(n_q))
    return {k: v.clone() for k, v in state.items()
            if not k.startswith("quantizer.vq.layers.") or k.startswith(keep)}


def _hub_checkpoint() -> Path:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(PRETRAINED_24KHZ))
    return found[-1] if found else folder / PRETRAINED_24KHZ
