"""Training audio from JSONL manifests or folders, with a count of everything skipped.

A manifest holds one JSON document per line: `{"segments": [{"text": ...}, {"audio": "a.wav"},
...]}` or a bare list of segments. Audio paths are relative to the manifest's folder and may
not leave it; bad lines, escaping paths and unreadable files are counted, skipped and reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnitok.tokenizers.audio_io import AUDIO_SUFFIXES, AudioTokenizerError, load_audio
from omnitok.train.manifest import ManifestError, media_files


@dataclass
class AudioData:
    """Clips (C, T) at one rate, and what was skipped on the way (reason -> count)."""

    clips: list[torch.Tensor] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first message

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, message)

    @property
    def seconds(self) -> float:
        return 0.0 if not self.clips else float(sum(c.shape[-1] for c in self.clips))

    def summary(self, sample_rate: int) -> str:
        minutes = self.seconds / sample_rate / 60
        text = f"{len(self.clips)} clips ({minutes:.1f} min) of audio"
        if self.skipped:
            parts = [f"{n} {reason} (e.g. {self.examples[reason]})"
                     for reason, n in sorted(self.skipped.items())]
            text += "; skipped " + "; ".join(parts)
        return text


def collect_audio(sources: list[Path], sample_rate: int, channels: int) -> AudioData:
    """Load every clip named by the manifests / found in the folders of `sources`."""
    try:
        paths, stats = media_files(list(sources), "audio", AUDIO_SUFFIXES)
    except ManifestError as e:
        raise AudioTokenizerError(str(e)) from None
    data = AudioData(skipped=Counter(stats.skipped), examples=dict(stats.examples))
    for path in paths:
        try:
            data.clips.append(load_audio(path, sample_rate, channels))
        except AudioTokenizerError as e:
            data.skip("unreadable audio files", str(e))
    return data
