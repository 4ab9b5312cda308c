"""The corpus manifest: JSONL, one document per line, an ordered list of segments.

    {"segments": [{"text": "a red circle"}, {"image": "img/1.png"}, {"audio": "wav/1.wav"}],
     ...any other keys: metadata kept as is}

An audio segment may name a span of its file in seconds, `{"audio": "wav/1.wav", "from": 0.4,
"to": 0.9}` (either bound may be left out): its codes are those frames of the whole file's
codes, so the spans of one file, in order, concatenate to the file's codes (the speech of a
caption interleaved word by word with its text, say). A bare JSON list of segments per line
is accepted too. Media paths are relative to the manifest's folder and may not escape it. A malformed line (bad JSON or UTF-8, wrong shape,
a path escaping the root, a missing file) is skipped and counted; `strict=True` raises instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omnitok import OmnitokError

KINDS = ("text", "image", "audio")
SPAN_KEYS = ("from", "to")  # an audio segment's span of its file, in seconds


class ManifestError(OmnitokError, ValueError):
    """A manifest line that cannot be used (raised only in strict mode, or for a missing file)."""


@dataclass(frozen=True)
class ManifestSegment:
    kind: str  # "text" | "image" | "audio"
    value: str | Path  # the text, or the resolved absolute path of the media file
    span: tuple[float, float | None] | None = None  # audio: (from, to) seconds of the file


@dataclass
class ManifestDocument:
    segments: list[ManifestSegment]
    meta: dict
    line: int  # 1-based line number in the manifest

    def media(self, kind: str) -> list[Path]:
        return [s.value for s in self.segments if s.kind == kind]


@dataclass
class ManifestStats:
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first "file:line: why"

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        skipped = f", {self.n_skipped} skipped ({why})" if why else ""
        return f"{self.documents} documents{skipped}"


def iter_manifest(path: str | os.PathLike, stats: ManifestStats | None = None, *,
                  strict: bool = False, check_files: bool = True) -> Iterator[ManifestDocument]:
    """The usable documents of a manifest, in order; bad lines are counted in `stats`."""
    path = Path(path)
    stats = stats if stats is not None else ManifestStats()
    root = path.resolve().parent
    try:
        handle = path.open("rb")
    except OSError as e:
        raise ManifestError(f"{path}: cannot read manifest ({e.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                doc = parse_line(raw, root, number, check_files)
            except ManifestError as e:
                if strict:
                    raise ManifestError(f"{path}:{number}: {e}") from None
                reason = e.args[0].split(":")[0]
                stats.skipped[reason] += 1
                stats.examples.setdefault(reason, f"{path.name}:{number}: {e}")
                continue
            stats.documents += 1
            yield doc


def read_manifest(path: str | os.PathLike, *, strict: bool = False,
                  check_files: bool = True) -> tuple[list[ManifestDocument], ManifestStats]:
    stats = ManifestStats()
    return list(iter_manifest(path, stats, strict=strict, check_files=check_files)), stats


def parse_line(raw: bytes, root: Path, number: int = 0,
               check_files: bool = True) -> ManifestDocument:
    """One manifest line -> document; ManifestError("<reason>: <detail>") if unusable."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError("not UTF-8: the line is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"bad JSON: {e}") from None
    meta: dict = {}
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if k != "segments"}
        data = data.get("segments")
    if not isinstance(data, list) or not data:
        raise ManifestError("no segments: expected a non-empty list of segments")
    segments = [_segment(s, root, check_files) for s in data]
    return ManifestDocument(segments, meta, number)


def _segment(seg: object, root: Path, check_files: bool) -> ManifestSegment:
    kinds = [k for k in seg if k in KINDS] if isinstance(seg, dict) else []
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is None or set(seg) - {kind, *(SPAN_KEYS if kind == "audio" else ())}:
        raise ManifestError(f"bad segment: expected one of {{text|image|audio: ...}}, got {seg!r}")
    value = seg[kind]
    if not isinstance(value, str):
        raise ManifestError(f"bad segment: {kind} must be a string, got {type(value).__name__}")
    if kind == "text":
        return ManifestSegment(kind, value)
    return ManifestSegment(kind, resolve_media(value, root, check_files), _span(seg))


def _span(seg: dict) -> tuple[float, float | None] | None:
    """The (from, to) seconds of an audio segment, None when it names neither."""
    if not set(SPAN_KEYS) & set(seg):
        return None
    bounds = [seg.get(k) for k in SPAN_KEYS]
    for key, b in zip(SPAN_KEYS, bounds):
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))
                              or not 0 <= b < float("inf")):
            raise ManifestError(f"bad span: {key} must be seconds >= 0, got {b!r}")
    start, stop = float(bounds[0] or 0.0), bounds[1]
    if stop is not None and stop <= start:
        raise ManifestError(f"bad span: to ({stop}) must be after from ({start})")
    return start, None if stop is None else float(stop)


def resolve_media(rel: str, root: Path, check_files: bool = True) -> Path:
    """`rel` resolved against `root`; refused if absolute, escaping `root`, or missing."""
    if not rel or Path(rel).is_absolute():
        raise ManifestError(f"bad path: {rel!r} must be relative to the manifest")
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ManifestError(f"path escapes the manifest folder: {rel!r}")
    if check_files and not full.is_file():
        raise ManifestError(f"missing file: {rel}")
    return full


def media_files(sources: list[str | os.PathLike], kind: str,
                suffixes: tuple[str, ...]) -> tuple[list[Path], ManifestStats]:
    """Unique `kind` files named by manifests, found in folders or given directly, in order.

    Files named by manifests are not checked for existence here: whoever decodes them counts
    the unreadable ones, so one missing file does not drop the rest of its document.
    """
    stats, seen = ManifestStats(), {}
    for source in map(Path, sources):
        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes)
        elif source.is_file() and source.suffix.lower() in suffixes:
            files = [source]
        elif source.is_file():
            files = [p for d in iter_manifest(source, stats, check_files=False)
                     for p in d.media(kind)]
        else:
            raise ManifestError(f"{source}: no such manifest or folder")
        seen.update(dict.fromkeys(files))
    return list(seen), stats
