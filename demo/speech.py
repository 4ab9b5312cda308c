"""Speech synthesis with espeak-ng (the `espeakng-loader` wheel ships the library and its data).

Our own small ctypes binding. espeak-ng keeps synthesis state in static variables (pitch
flutter phase, wave phase, echo buffers) that carry over from one utterance to the next and
that `espeak_Terminate` does not reset, so the same call gives different samples depending on
what was spoken before. To make every clip a pure function of its arguments, each call loads
the library, speaks, and unloads it again (`dlclose`; a few ms, and about 3 KB that espeak-ng
never frees). This only resets the library if nothing else in the process holds it loaded.
Voices with `breath` in their variant file (en+f2, en+f3, en+f5, ...) are still not
reproducible across processes, so the demo world uses other voices.
"""

from __future__ import annotations

import _ctypes
import ctypes
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from omnitok import OmnitokError

NATIVE_RATE = 22050  # espeak-ng's own output rate
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CHARS_UTF8 = 1
_EVENT_WORD = 1
_LOCK = threading.Lock()


class SpeechError(OmnitokError):
    """espeak-ng could not be loaded, or it refused a voice or a parameter."""


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))
_chunks: list[np.ndarray] = []
_words: list[tuple[int, int, int]] = []  # (text position, length, audio position in ms)


@_CALLBACK
def _collect(wav, n, events):
    if n > 0:
        _chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
    i = 0
    while events and events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
        if events[i].type == _EVENT_WORD:
            e = events[i]
            _words.append((e.text_position, e.length, e.audio_position))
        i += 1
    return 0


@lru_cache(maxsize=1)
def _paths() -> tuple[str, bytes]:
    try:
        import espeakng_loader
    except ImportError:
        raise SpeechError("speech needs the espeakng-loader package "
                          "(pip install espeakng-loader)") from None
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path().encode()
    except RuntimeError as e:
        raise SpeechError(f"espeak-ng data not found: {e}") from None


def _load() -> ctypes.CDLL:
    lib_path, data_path = _paths()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        raise SpeechError(f"cannot load espeak-ng from {lib_path}: {e}") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
    if rate != NATIVE_RATE:
        _unload(lib)
        raise SpeechError(f"espeak-ng failed to initialise (returned {rate}) with data "
                          f"{data_path.decode()}")
    lib.espeak_SetSynthCallback(_collect)
    return lib


def _unload(lib: ctypes.CDLL) -> None:
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def _variant_ok(voice: str) -> bool:
    """espeak-ng silently ignores an unknown variant ("en+nosuch"); we refuse it."""
    _, plus, variant = voice.partition("+")
    if not plus:
        return True
    variants = Path(_paths()[1].decode()) / "voices" / "!v"
    return bool(variant) and "/" not in variant and (variants / variant).is_file()


@dataclass(frozen=True)
class Utterance:
    """Raw espeak-ng output: int16 samples at 22,050 Hz and word onsets in samples."""

    samples: np.ndarray  # (N,) int16
    word_onsets: tuple[int, ...]


def speak(text: str, voice: str = "en+m3", rate: int = 150, pitch: int = 50,
          pitch_range: int = 50) -> Utterance:
    """Speak `text` with espeak-ng; the same arguments always give the same samples."""
    if not text.strip():
        raise SpeechError("nothing to say: empty text")
    for name, value, lo, hi in (("rate", rate, 80, 450), ("pitch", pitch, 0, 99),
                                ("pitch_range", pitch_range, 0, 99)):
        if not lo <= value <= hi:
            raise SpeechError(f"{name} must be in [{lo}, {hi}], got {value}")
    data = text.encode("utf-8")
    with _LOCK:
        _chunks.clear()
        _words.clear()
        lib = _load()
        try:
            if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0 or not _variant_ok(voice):
                raise SpeechError(f"unknown espeak-ng voice {voice!r} (e.g. en+m3, en+f4)")
            for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
                lib.espeak_SetParameter(param, value, 0)
            if lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None) != 0:
                raise SpeechError(f"espeak-ng refused to speak {text!r}")
            lib.espeak_Synchronize()
        finally:
            _unload(lib)
        samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        onsets = tuple(ms * NATIVE_RATE // 1000 for _, _, ms in _words)
    return Utterance(samples, onsets)


def synthesize(text: str, voice: str = "en+m3", rate: int = 150, pitch: int = 50,
               sample_rate: int = 16000, pitch_range: int = 50) -> np.ndarray:
    """Speak `text`: float32 mono samples in [-1, 1] at `sample_rate`, silence trimmed.

    Args:
        text: what to say (UTF-8; numbers and punctuation are read the espeak-ng way).
        voice: an espeak-ng voice, language plus optional variant ("en+m3", "en-us+f4").
        rate: speaking rate in words per minute (80..450).
        pitch: base pitch, 0..99 (50 is the voice's normal pitch).
        sample_rate: output rate in Hz; resampled from espeak-ng's 22,050 Hz.
        pitch_range: intonation range, 0..99 (0 is monotone).
    """
    return synthesize_words(text, voice, rate, pitch, sample_rate, pitch_range)[0]


def synthesize_words(text: str, voice: str = "en+m3", rate: int = 150, pitch: int = 50,
                     sample_rate: int = 16000, pitch_range: int = 50
                     ) -> tuple[np.ndarray, tuple[float, ...]]:
    """`synthesize`, and where each word of `text` starts: seconds into the returned samples
    (espeak-ng's word events; 0 for a word that starts in the trimmed silence)."""
    if not 4000 <= sample_rate <= 192000:
        raise SpeechError(f"sample_rate must be in [4000, 192000] Hz, got {sample_rate}")
    utt = speak(text, voice, rate, pitch, pitch_range)
    x = utt.samples.astype(np.float32) / 32768.0
    lo, hi = trim_bounds(x, NATIVE_RATE)
    onsets = tuple(round(min(max(0, o - lo), hi - lo) / NATIVE_RATE, 4)
                   for o in utt.word_onsets)
    return np.clip(resample(x[lo:hi], NATIVE_RATE, sample_rate), -1.0, 1.0), onsets


def trim_bounds(x: np.ndarray, sample_rate: int, threshold_db: float = -40.0,
                margin_s: float = 0.01) -> tuple[int, int]:
    """[start, stop) of `x` without leading/trailing frames `threshold_db` below the peak."""
    hop = max(1, sample_rate // 100)
    n = len(x) // hop
    if n == 0:
        return 0, len(x)
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    loud = np.nonzero(rms > rms.max() * 10 ** (threshold_db / 20))[0]
    if len(loud) == 0:
        return 0, len(x)
    margin = int(margin_s * sample_rate)
    return max(0, loud[0] * hop - margin), min(len(x), (loud[-1] + 1) * hop + margin)


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of a mono signal (windowed sinc, as torchaudio's default).

    Plain numpy with a cached kernel: a few ms for two seconds, single-threaded, and the same
    bytes whatever torch version is installed.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig == new or len(x) == 0:
        return x.copy()
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    kernel, width = _sinc_kernel(orig, new)  # (new, K)
    padded = np.pad(x, (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    # einsum, not matmul: BLAS threads spin badly on a busy machine (35 ms instead of 3)
    y = np.einsum("fk,pk->fp", frames, kernel, optimize=False)  # (frames, new)
    return y.reshape(-1)[: math.ceil(new * len(x) / orig)]


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99
                 ) -> tuple[np.ndarray, int]:
    """One Hann-windowed sinc filter per output phase: (new, 2 * width + orig), width."""
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / cutoff)
    taps = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = np.clip((taps - np.arange(new)[:, None] / new) * cutoff, -zeros, zeros)
    window = np.cos(t * np.pi / zeros / 2) ** 2
    t = t * np.pi
    sinc = np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t))
    return (sinc * window * cutoff / orig).astype(np.float32), width
