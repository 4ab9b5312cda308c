"""Training audio from JSONL manifests or folders, with a count of everything skipped.

A manifest holds one JSON document per line: `{"segments": [{"text": ...}, {"audio": "a.wav"},
...]}` or a bare list of segments. Audio paths are relative to the manifest's folder and may
not leave it; bad lines, escaping paths and unreadable files are counted, skipped and reported.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omnitok.tokenizers.audio_io import AudioTokenizerError, list_audio_files, load_audio


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


def manifest_audio_paths(manifest: Path, data: AudioData) -> list[Path]:
    """Audio files named by a JSONL manifest; bad lines and escaping paths go to `data`."""
    root = manifest.parent.resolve()
    paths = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AudioTokenizerError(f"{manifest}: cannot read the manifest ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            doc = json.loads(line)
            segments = doc["segments"] if isinstance(doc, dict) else doc
            if not isinstance(segments, list):
                raise TypeError("segments is not a list")
            rels = [s["audio"] for s in segments if isinstance(s, dict) and "audio" in s]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            data.skip("bad manifest lines", f"{where}: {e}")
            continue
        for rel in rels:
            path = (root / str(rel)).resolve()
            if not isinstance(rel, str) or not path.is_relative_to(root):
                data.skip("paths escaping the manifest folder", f"{where}: {rel!r}")
            else:
                paths.append(path)
    return paths


def collect_audio(sources: list[Path], sample_rate: int, channels: int) -> AudioData:
    """Load every clip named by the manifests / found in the folders of `sources`."""
    data, paths = AudioData(), []
    for source in map(Path, sources):
        if source.is_dir():
            paths += list_audio_files(source)
        elif source.is_file():
            paths += manifest_audio_paths(source, data)
        else:
            raise AudioTokenizerError(f"{source}: no such manifest or folder")
    for path in dict.fromkeys(paths):  # each file once, in order
        try:
            data.clips.append(load_audio(path, sample_rate, channels))
        except AudioTokenizerError as e:
            data.skip("unreadable audio files", str(e))
    return data
