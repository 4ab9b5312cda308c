"""Prompts from the command line (`--text ... --image ...` in order) or a JSONL file.

A JSONL prompt file uses the training manifest's document format, one prompt per line:
`{"segments": [{"image": "photo.png"}, {"text": "Describe this."}]}`; media paths are
relative to the file and may not escape its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from omnitok import OmnitokError
from omnitok.tokenizers.bundle import BundleError, TokenizerBundle, media_kind
from omnitok.tokenizers.document import Document, TextSegment
from omnitok.train.manifest import ManifestError, iter_manifest


@dataclass(frozen=True)
class PromptPart:
    """One prompt segment: ("text", "a red circle"), ("image", "photo.png"), ..."""

    cli_flags: ClassVar[tuple[str, ...]] = ("text", "image", "audio")
    cli_help: ClassVar[dict[str, str]] = {"text": "a text segment of the prompt",
                                          "image": "an image file in the prompt",
                                          "audio": "an audio file in the prompt"}
    kind: str
    value: str

    @classmethod
    def from_flag(cls, flag: str, value: str) -> PromptPart:
        return cls(flag, value)


def document_from_parts(parts: list[PromptPart], tokenizers: TokenizerBundle) -> Document:
    """Encode media parts with the checkpoint's tokenizers; text parts stay text."""
    if not parts:
        raise OmnitokError("no prompt: give --text/--image/--audio, or --prompts FILE")
    segments: list[tuple[str, str | Path]] = []
    for part in parts:
        if part.kind == "text":
            segments.append(("text", part.value))
            continue
        path = Path(part.value)
        if not path.is_file():
            raise OmnitokError(f"{path}: no such {part.kind} file")
        check_media(path, part.kind, tokenizers)
        segments.append((part.kind, path))
    doc = tokenizers.document(segments)
    if not doc.normalized().segments:
        raise OmnitokError("the prompt is empty")
    return doc


def check_media(path: Path, kind: str, tokenizers: TokenizerBundle) -> None:
    """Refuse a media prompt that the checkpoint cannot read, before any work starts."""
    got = media_kind(path)
    if got != kind:
        article = "an" if got[0] in "aeiou" else "a"
        raise OmnitokError(f"{path}: {article} {got} file given as --{kind}")
    if getattr(tokenizers, kind) is None:
        raise OmnitokError(f"{path}: this checkpoint has no {kind} tokenizer, so it cannot "
                           f"read {kind} prompts")


def documents_from_file(path: Path, tokenizers: TokenizerBundle) -> list[Document]:
    """Every prompt of a JSONL file; any bad line is an error naming the line."""
    docs = []
    try:
        for entry in iter_manifest(path, strict=True):
            parts = [PromptPart(s.kind, str(s.value)) for s in entry.segments]
            try:
                docs.append(document_from_parts(parts, tokenizers))
            except (OmnitokError, BundleError) as e:
                raise OmnitokError(f"{path}:{entry.line}: {e}") from None
    except ManifestError as e:
        raise OmnitokError(str(e)) from None
    if not docs:
        raise OmnitokError(f"{path}: no prompts in the file")
    return docs


def text_document(text: str | None) -> Document | None:
    return None if text is None else Document([TextSegment(text)])
