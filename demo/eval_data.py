"""The held-out lines that `omnitok eval` scores: prompt, target and ground truth of each.

A demo-world manifest line is one document whose last segment is the target; its metadata
names the direction, the split ("heldout-seen" or "heldout-unseen"), the caption and the
attributes. Lines with all three modalities ("image->text->audio") are scored on their
target: their direction key names the sorted prompt modalities, e.g. "image+text->audio".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from omnitok import OmnitokError
from omnitok.demo.world import DIRECTIONS, Attrs, WorldError
from omnitok.train.manifest import ManifestError, ManifestSegment, iter_manifest

SPLITS = ("heldout-seen", "heldout-unseen")
ALL_THREE = ("audio+image->text", "audio+text->image", "image+text->audio")
ORDER = DIRECTIONS + ALL_THREE  # every direction key, in the order the table shows them
META = ("direction", "split", "caption", "attrs")


@dataclass(frozen=True)
class EvalItem:
    """One held-out line: the prompt's (kind, text or media path) segments and the target."""

    line: int
    direction: str  # a key of ORDER
    split: str
    caption: str
    attrs: Attrs
    prompt: tuple[tuple[str, str | Path], ...]
    target: tuple[str, str | Path]

    @property
    def kind(self) -> str:
        """The target modality: text, image or audio."""
        return self.target[0]

    def prompt_text(self) -> str:
        """The prompt in words, media as [image] / [speech: <caption>]: for people."""
        parts = []
        for kind, value in self.prompt:
            parts.append(str(value) if kind == "text" else
                         "[image]" if kind == "image" else f"[speech: {self.caption}]")
        return " ".join(parts)


def direction_key(direction: str) -> str:
    """"text->image" stays; "image->text->audio" (all three) -> "image+text->audio"."""
    kinds = direction.split("->")
    if len(kinds) <= 2:
        return direction
    return "+".join(sorted(kinds[:-1])) + "->" + kinds[-1]


def read_heldout(data: Path, limit: int = 0) -> list[EvalItem]:
    """The demo-world lines of `data`, at most `limit` per direction and split (0: all)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    items = []
    try:
        for doc in iter_manifest(data, strict=True):
            item = _item(data, doc.line, doc.segments, doc.meta)
            key = (item.direction, item.split)
            if limit <= 0 or counts[key] < limit:
                counts[key] += 1
                items.append(item)
    except ManifestError as e:
        raise OmnitokError(str(e)) from None
    if not items:
        raise OmnitokError(f"{data}: no held-out documents to evaluate")
    return items


def _item(data: Path, line: int, segments: list, meta: dict) -> EvalItem:
    where = f"{data}:{line}"
    missing = [k for k in META if k not in meta]
    if missing:
        raise OmnitokError(f"{where}: not a demo-world document (no {', '.join(missing)}): "
                           f"omnitok eval reads the heldout.jsonl of `omnitok data demo`")
    try:
        attrs = Attrs(**meta["attrs"])
    except (TypeError, WorldError) as e:
        raise OmnitokError(f"{where}: bad attrs ({e})") from None
    key = direction_key(str(meta["direction"]))
    if key not in ORDER or len(segments) < 2:
        raise OmnitokError(f"{where}: unknown direction {meta['direction']!r}")
    if segments[-1].kind != key.split("->")[-1]:
        raise OmnitokError(f"{where}: the last segment is {segments[-1].kind}, but the "
                           f"direction {meta['direction']} ends with {key.split('->')[-1]}")
    split = str(meta["split"])
    if split not in SPLITS:
        raise OmnitokError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    segments = whole_speech(segments)
    prompt = tuple((s.kind, s.value) for s in segments[:-1])
    return EvalItem(line, key, split, str(meta["caption"]), attrs, prompt,
                    (segments[-1].kind, segments[-1].value))


def whole_speech(segments: list[ManifestSegment]) -> list[ManifestSegment]:
    """A text spoken word by word (its instruction, then each word and its span of one clip:
    `omnitok.demo.world.spoken_words`) back as one text and the whole clip: the prompt and
    the target that eval generates and judges."""
    out: list[ManifestSegment] = []
    for seg in segments:
        if seg.kind != "audio" or seg.span is None:
            out.append(seg)
            continue
        words = []
        while out and out[-1].kind == "text":  # the word, and the instruction before it
            words.insert(0, out.pop().value.strip())
        if out and out[-1].kind == "audio" and out[-1].value == seg.value and len(out) > 1:
            out.pop()  # the clip's earlier words: join them
            words.insert(0, out.pop().value)
        out += [ManifestSegment("text", " ".join(w for w in words if w)),
                ManifestSegment("audio", seg.value)]
    return out


def by_direction(items: list[EvalItem]) -> dict[str, list[EvalItem]]:
    """Items grouped by direction key, in table order."""
    groups: dict[str, list[EvalItem]] = {}
    for key in ORDER:
        chosen = [it for it in items if it.direction == key]
        if chosen:
            groups[key] = chosen
    return groups


def choose_directions(groups: dict[str, list[EvalItem]],
                      wanted: list[str] | None) -> dict[str, list[EvalItem]]:
    """Only the `wanted` directions (None: all); an unknown name is an error."""
    if wanted is None:
        return groups
    unknown = [w for w in wanted if direction_key(w) not in ORDER]
    if unknown:
        raise OmnitokError(f"unknown direction {unknown[0]!r}; choose from {', '.join(ORDER)}")
    keys = {direction_key(w) for w in wanted}
    chosen = {k: v for k, v in groups.items() if k in keys}
    if not chosen:
        raise OmnitokError(f"the manifest has no lines of {', '.join(sorted(keys))}")
    return chosen
