"""Answers to files: `<stem>_<i>.txt|png|wav` per segment, and answers followed as they grow.

Audio is decoded in windows of `AUDIO_CHUNK_SECONDS` with `AUDIO_CONTEXT_SECONDS` of codes on
each side (`AudioTokenizer.chunk_windows`). A window depends only on codes before its end, so
`AnswerStream` writes each window to the WAV as soon as its frames exist, and the finished
file is byte-identical to the one `write_answer` writes for the whole segment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import soundfile as sf
import torch

from omnitok import atomic_write_text
from omnitok.generate.grammar import AudioCursor
from omnitok.tokenizers.audio import save_audio
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import (
    AudioSegment,
    Document,
    ImageSegment,
    SpecialSegment,
    TextSegment,
)
from omnitok.tokenizers.image import save_image
from omnitok.tokenizers.vocab import Modality

AUDIO_CHUNK_SECONDS = 1.0
AUDIO_CONTEXT_SECONDS = 0.5
SUFFIX = {"text": ".txt", "image": ".png", "audio": ".wav"}


def segment_path(folder: Path, stem: str, index: int, kind: str) -> Path:
    return folder / f"{stem}_{index}{SUFFIX[kind]}"


def decode_audio(tokenizers: TokenizerBundle, codes: torch.Tensor) -> torch.Tensor:
    """(K, F) codes -> (C, F * hop) samples, window by window as the stream does."""
    return tokenizers.audio.decode_long(codes, chunk_seconds=AUDIO_CHUNK_SECONDS,
                                        context_seconds=AUDIO_CONTEXT_SECONDS)


def write_answer(tokenizers: TokenizerBundle, doc: Document, folder: Path, stem: str,
                 done: frozenset[Path] = frozenset()) -> list[dict]:
    """Write each segment of `doc` (paths in `done` were written already); what was written."""
    files = []
    for i, seg in enumerate(doc):
        if isinstance(seg, SpecialSegment):
            continue
        kind = ("text" if isinstance(seg, TextSegment) else
                "image" if isinstance(seg, ImageSegment) else "audio")
        path = segment_path(folder, stem, i, kind)
        if path not in done:
            _write_segment(tokenizers, seg, path)
        entry = {"kind": kind, "path": str(path)}
        if kind == "text":
            entry["text"] = seg.text
        files.append(entry)
    return files


def _write_segment(tokenizers: TokenizerBundle, seg, path: Path) -> None:
    if isinstance(seg, TextSegment):
        atomic_write_text(path, seg.text + "\n")
    elif isinstance(seg, ImageSegment):
        save_image(tokenizers.image.decode(seg.codes[None])[0], path)
    elif isinstance(seg, AudioSegment):
        save_audio(decode_audio(tokenizers, seg.codes), tokenizers.audio.sample_rate, path)


class _AudioWriter:
    """One audio segment: codes collected frame by frame, windows written as they complete."""

    def __init__(self, tokenizers: TokenizerBundle, path: Path) -> None:
        self.tok = tokenizers.audio
        spec = tokenizers.vocab.audio
        self.cursor = AudioCursor(spec.n_q, spec.pattern == "delay")
        self.codes = torch.zeros(spec.n_q, 0, dtype=torch.long)
        self.complete = 0  # frames with every level present (they complete in order)
        self.next_start = 0  # first frame not yet written
        self.path = path
        self.file = sf.SoundFile(path, "w", samplerate=self.tok.sample_rate,
                                 channels=self.tok.channels, subtype="PCM_16", format="WAV")

    def add(self, level: int, code: int) -> None:
        frame = self.cursor.frame_of_next(level)
        self.cursor.advance(level)
        if frame >= self.codes.shape[1]:
            grow = torch.zeros(self.codes.shape[0], max(frame + 1, 2 * self.codes.shape[1])
                               - self.codes.shape[1], dtype=torch.long)
            self.codes = torch.cat([self.codes, grow], dim=1)
        self.codes[level, frame] = code
        if level == self.codes.shape[0] - 1:
            self.complete = frame + 1
            self._write(final=False)

    def _write(self, final: bool) -> None:
        chunk, ctx = self.tok.chunk_frames(AUDIO_CHUNK_SECONDS, AUDIO_CONTEXT_SECONDS)
        codes = self.codes[:, :self.complete]
        for window in self.tok.chunk_windows(self.complete, AUDIO_CHUNK_SECONDS,
                                             AUDIO_CONTEXT_SECONDS):
            start = window[0]
            if start < self.next_start:
                continue
            if not final and start + chunk + ctx > self.complete:
                break
            wav = self.tok.decode_window(codes, window)
            self.file.write(wav.detach().float().clamp(-1, 1).cpu().numpy().T)
            self.file.flush()
            self.next_start = window[1]

    def close(self) -> None:
        self._write(final=True)
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class AnswerStream:
    """Follows one answer id by id: echoes its text, writes its audio while it is generated."""

    def __init__(self, tokenizers: TokenizerBundle, folder: Path, stem: str, *,
                 audio: bool = True, echo: TextIO | None = sys.stdout) -> None:
        self.tok, self.vocab = tokenizers, tokenizers.vocab
        self.folder, self.stem, self.stream_audio, self.echo = folder, stem, audio, echo
        self.index = -1  # segment index of the current run
        self.kind: str | None = None
        self.text_ids: list[int] = []
        self.printed = ""
        self.audio: _AudioWriter | None = None
        self.written: set[Path] = set()

    def push(self, token: int) -> None:
        r, local = self.vocab.to_local(token)
        if r.modality == Modality.TEXT:
            if self.kind != "text":
                self._begin("text")
            self.text_ids.append(local)
            self._echo()
        elif token == self.vocab.special("<boi>"):
            self._begin("image")
        elif token == self.vocab.special("<boa>"):
            self._begin("audio")
            if self.stream_audio and self.tok.audio is not None:
                path = segment_path(self.folder, self.stem, self.index, "audio")
                self.folder.mkdir(parents=True, exist_ok=True)
                self.audio = _AudioWriter(self.tok, path)
        elif r.modality == Modality.AUDIO and self.audio is not None:
            self.audio.add(r.level, local)
        elif token == self.vocab.special("<eoa>") and self.audio is not None:
            self.audio.close()
            self.written.add(self.audio.path)
            self.audio = None

    def _begin(self, kind: str) -> None:
        if self.kind == "text" and self.echo is not None:
            self.echo.write("\n")
        self.index += 1
        self.kind, self.text_ids, self.printed = kind, [], ""

    def _echo(self) -> None:
        if self.echo is None or self.tok.text is None:
            return
        text = self.tok.text.decode(self.text_ids)
        if text.startswith(self.printed):
            self.echo.write(text[len(self.printed):])
            self.echo.flush()
            self.printed = text

    def finish(self) -> None:
        if self.kind == "text" and self.echo is not None and self.printed:
            self.echo.write("\n")

    def abort(self) -> None:
        """Remove a half-written WAV (and any streamed file) after a failure."""
        if self.audio is not None:
            self.audio.abort()
        for path in self.written:
            if os.path.exists(path):
                path.unlink()
