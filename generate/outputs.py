"""Answers to files: `<stem>_<i>.txt|png|wav` per segment, and answers followed as they grow.

Audio is decoded in windows of `AUDIO_CHUNK_SECONDS` with `AUDIO_CONTEXT_SECONDS` of codes on
each side (`AudioTokenizer.chunk_windows`). A window depends only on codes before its end, so
`AnswerStream` writes each window to the WAV as soon as its frames exist, and the finished
file is byte-identical to the one `write_answer` writes for the whole segment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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


class AudioChunker:
    """One audio segment followed id by id: returns sample chunks (C, n) as windows complete."""

    def __init__(self, tokenizers: TokenizerBundle) -> None:
        self.tok = tokenizers.audio
        spec = tokenizers.vocab.audio
        self.cursor = AudioCursor(spec.n_q, spec.pattern == "delay")
        self.codes = torch.zeros(spec.n_q, 0, dtype=torch.long)
        self.complete = 0  # frames with every level present (they complete in order)
        self.next_start = 0  # first frame not yet decoded

    def add(self, level: int, code: int) -> list[torch.Tensor]:
        frame = self.cursor.frame_of_next(level)
        self.cursor.advance(level)
        if frame >= self.codes.shape[1]:
            grow = torch.zeros(self.codes.shape[0], max(frame + 1, 2 * self.codes.shape[1])
                               - self.codes.shape[1], dtype=torch.long)
            self.codes = torch.cat([self.codes, grow], dim=1)
        self.codes[level, frame] = code
        if level < self.codes.shape[0] - 1:
            return []
        self.complete = frame + 1
        return self._windows(final=False)

    def close(self) -> list[torch.Tensor]:
        return self._windows(final=True)

    def _windows(self, final: bool) -> list[torch.Tensor]:
        chunk, ctx = self.tok.chunk_frames(AUDIO_CHUNK_SECONDS, AUDIO_CONTEXT_SECONDS)
        codes, out = self.codes[:, :self.complete], []
        for window in self.tok.chunk_windows(self.complete, AUDIO_CHUNK_SECONDS,
                                             AUDIO_CONTEXT_SECONDS):
            if window[0] < self.next_start:
                continue
            if not final and window[0] + chunk + ctx > self.complete:
                break
            out.append(self.tok.decode_window(codes, window).detach().float().clamp(-1, 1))
            self.next_start = window[1]
        return out


class _WavWriter:
    """A 16-bit WAV written chunk by chunk (flushed after each)."""

    def __init__(self, path: Path, sample_rate: int, channels: int) -> None:
        self.path = path
        self.file = sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels,
                                 subtype="PCM_16", format="WAV")

    def write(self, chunk: torch.Tensor) -> None:
        self.file.write(chunk.cpu().numpy().T)
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class AnswerStream:
    """Follows one answer id by id: echoes its text, writes its audio while it is generated."""

    def __init__(self, tokenizers: TokenizerBundle, folder: Path | None, stem: str = "answer",
                 *, echo: TextIO | None = sys.stdout,
                 on_event: Callable[[str, object], None] | None = None) -> None:
        """folder: where WAVs are written as they grow (None: none written);
        on_event: called with ("text", new text) and ("audio", samples (C, n))."""
        self.tok, self.vocab = tokenizers, tokenizers.vocab
        self.folder, self.stem, self.echo, self.on_event = folder, stem, echo, on_event
        self.index = -1  # segment index of the current run
        self.kind: str | None = None
        self.text_ids: list[int] = []
        self.printed = ""
        self.audio: AudioChunker | None = None
        self.wav: _WavWriter | None = None
        self.written: set[Path] = set()

    def push(self, token: int) -> None:
        r, local = self.vocab.to_local(token)
        if r.modality == Modality.TEXT:
            if self.kind != "text":
                self._begin("text")
            self.text_ids.append(local)
            self._echo()
        elif token == self.vocab.special("<boa>") and self.tok.audio is not None:
            self._begin("audio")
            self.audio = AudioChunker(self.tok)
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.wav = _WavWriter(segment_path(self.folder, self.stem, self.index, "audio"),
                                      self.tok.audio.sample_rate, self.tok.audio.channels)
        elif r.modality == Modality.AUDIO and self.audio is not None:
            self._audio(self.audio.add(r.level, local))
        elif token == self.vocab.special("<eoa>") and self.audio is not None:
            self._audio(self.audio.close())
            if self.wav is not None:
                self.wav.close()
                self.written.add(self.wav.path)
            self.audio = self.wav = None
        elif token in (self.vocab.special("<boi>"), self.vocab.special("<boa>")):
            self._begin("image" if token == self.vocab.special("<boi>") else "audio")

    def _audio(self, chunks: list[torch.Tensor]) -> None:
        for chunk in chunks:
            if self.wav is not None:
                self.wav.write(chunk)
            if self.on_event is not None:
                self.on_event("audio", chunk)

    def _begin(self, kind: str) -> None:
        if self.kind == "text" and self.echo is not None:
            self.echo.write("\n")
        self.index += 1
        self.kind, self.text_ids, self.printed = kind, [], ""

    def _echo(self) -> None:
        if self.tok.text is None:
            return
        text = self.tok.text.decode(self.text_ids)
        if text.startswith(self.printed) and len(text) > len(self.printed):
            new = text[len(self.printed):]
            if self.echo is not None:
                self.echo.write(new)
                self.echo.flush()
            if self.on_event is not None:
                self.on_event("text", new)
            self.printed = text

    def finish(self) -> None:
        if self.kind == "text" and self.echo is not None and self.printed:
            self.echo.write("\n")

    def abort(self) -> None:
        """Remove a half-written WAV (and any streamed file) after a failure."""
        if self.wav is not None:
            self.wav.abort()
        for path in self.written:
            if os.path.exists(path):
                path.unlink()
