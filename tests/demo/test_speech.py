"""espeak-ng through our ctypes binding: sane audio, reproducible, voices differ, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from omnitok import OmnitokError
from omnitok.demo.speech import SpeechError, resample, speak, synthesize

CAPTION = "a red circle on a blue background"


def test_synthesize_is_speech_at_the_requested_rate():
    x16 = synthesize(CAPTION, sample_rate=16000)
    x24 = synthesize(CAPTION, sample_rate=24000)
    assert x16.dtype == np.float32 and x16.ndim == 1
    assert 1.0 < len(x16) / 16000 < 3.5  # about two seconds
    assert abs(len(x24) / 24000 - len(x16) / 16000) < 0.01
    assert 0.2 < np.abs(x16).max() <= 1.0
    frames = x16[: len(x16) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt((frames ** 2).mean(1)) > 0.01
    assert loud[:5].any() and loud[-5:].any()  # leading/trailing silence trimmed
    assert loud.mean() > 0.6


def test_same_arguments_same_samples_whatever_came_before():
    first = synthesize(CAPTION, "en+m3", 150, 50)
    synthesize("a green star on a black background", "en+f4", 180, 60)  # changes espeak state
    assert np.array_equal(first, synthesize(CAPTION, "en+m3", 150, 50))


def test_voices_rates_and_pitches_differ():
    base = synthesize(CAPTION, "en+m3")
    for other in (synthesize(CAPTION, "en+f4"), synthesize(CAPTION, "en+m3", rate=190),
                  synthesize(CAPTION, "en+m3", pitch=70)):
        assert len(other) != len(base) or not np.allclose(other, base, atol=1e-3)
    assert len(synthesize(CAPTION, rate=190)) < 0.9 * len(base)


def test_word_onsets_from_espeak_events():
    utt = speak(CAPTION)
    assert utt.samples.dtype == np.int16
    assert len(utt.word_onsets) == 7 and list(utt.word_onsets) == sorted(utt.word_onsets)
    assert utt.word_onsets[-1] < len(utt.samples)


def test_thread_safe():
    want = synthesize(CAPTION, "en+m7")
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(synthesize(CAPTION, "en+m7")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(np.array_equal(g, want) for g in got)


@pytest.mark.parametrize("kwargs, message", [
    ({"voice": "en+nosuch"}, "unknown espeak-ng voice"),
    ({"voice": "zz-nowhere"}, "unknown espeak-ng voice"),
    ({"rate": 5}, "rate must be"),
    ({"pitch": 120}, "pitch must be"),
    ({"text": "   "}, "empty text"),
    ({"sample_rate": 0}, "sample_rate must be"),
])
def test_bad_input(kwargs, message):
    args = {"text": CAPTION, **kwargs}
    with pytest.raises(SpeechError, match=message) as e:
        synthesize(**args)
    assert isinstance(e.value, OmnitokError) and "\n" not in str(e.value)


@pytest.mark.parametrize("orig, new", [(22050, 16000), (16000, 24000), (48000, 16000)])
def test_resample_matches_torchaudio(orig, new):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchaudio.functional")
    x = np.random.default_rng(0).normal(size=9001).astype(np.float32)
    want = functional.resample(torch.from_numpy(x), orig, new).numpy()
    got = resample(x, orig, new)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
