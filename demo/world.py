"""The "shapes and speech" world: coloured shapes, their captions, and the captions spoken.

A sample is one rendered image plus one spoken clip of its caption; every sample yields one
document per direction (text->image, image->text, text->audio, audio->text, audio->image,
image->audio) and one with all three modalities in a random order. The target is always the
last segment; an instruction word at the start names the target modality ("draw" -> image,
"say" -> audio, "write" -> text). Everything is a pure function of (seed, split, index), so
builds are deterministic, resumable and independent of the number of workers.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omnitok import OmnitokError, atomic_path, atomic_write_text, read_json_object

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 40), "green": (40, 160, 60), "blue": (35, 75, 215),
    "yellow": (250, 230, 40), "purple": (135, 55, 175), "orange": (245, 125, 20),
    "white": (240, 240, 240), "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "heart", "cross")
VOICES = ("en+m3", "en+f4", "en+m7", "en+belinda")  # reproducible: no `breath` in their variant
RATES = (140, 175)  # base speaking rates (words per minute); each clip jitters them
RATE_JITTER, PITCH_JITTER = 10, 8  # +- per clip around the base rate and pitch 50
SCALE_RANGE = (0.24, 0.36)  # circumradius as a fraction of the image side
MAX_ROTATION = 10.0  # degrees either way: a square never turns into a diamond
MARGIN = 0.04  # the shape's circumcircle stays this far (fraction of the side) from the edge
N_UNSEEN_PER_VALUE = 6  # held-out-only combinations per shape, per colour, per background
DIRECTIONS = ("text->image", "image->text", "text->audio", "audio->text", "audio->image",
              "image->audio")
INSTRUCTIONS = {"image": "draw:", "audio": "say:", "text": "write:"}
SUPERSAMPLE = 4
FORMAT_VERSION = 1
_MEDIA = re.compile(r"(train|heldout)-\d{6}\.(png|wav|words\.json)")


class WorldError(OmnitokError, ValueError):
    """An unknown attribute value, or world parameters that cannot work."""


@dataclass(frozen=True)
class Attrs:
    """What a sample shows and says."""

    shape: str
    colour: str
    background: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise WorldError(f"unknown shape {self.shape!r}; one of {', '.join(SHAPES)}")
        for c in (self.colour, self.background):
            if c not in COLOURS:
                raise WorldError(f"unknown colour {c!r}; one of {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise WorldError(f"shape and background are both {self.colour}")

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def parse_caption(text: str) -> Attrs | None:
    """The attributes a caption names ("a red circle on a blue background"), else None."""
    words = text.strip().lower().rstrip(".").split()
    if len(words) != 7 or [words[i] for i in (0, 3, 4, 6)] != ["a", "on", "a", "background"]:
        return None
    try:
        return Attrs(shape=words[2], colour=words[1], background=words[5])
    except WorldError:
        return None


@cache
def all_combos() -> tuple[Attrs, ...]:
    """Every valid (shape, colour, background), in a fixed order."""
    return tuple(Attrs(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if b != c)


# ---- images --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Jitter:
    """Placement of the shape: centre offset and circumradius as fractions of the image side,
    rotation in degrees (counter-clockwise)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 0.30
    rotation: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Jitter:
        scale = float(rng.uniform(*SCALE_RANGE))
        room = 0.5 - scale - MARGIN
        dx, dy = (float(v) for v in rng.uniform(-room, room, size=2))
        return cls(dx, dy, scale, float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)))


def _regular(n: int, radius: float = 1.0, phase: float = -90.0) -> np.ndarray:
    a = np.radians(phase + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    p = np.stack([16 * np.sin(t) ** 3,
                  -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    p -= (p.max(0) + p.min(0)) / 2
    return p / np.linalg.norm(p, axis=1).max()


def _cross(w: float = 0.32) -> np.ndarray:
    q = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
    return np.array(q + [(-x, -y) for x, y in q]) / math.hypot(1, w)


@cache
def outline(shape: str) -> np.ndarray:
    """The shape's polygon (V, 2): circumradius 1 around the origin, y pointing down."""
    star = _regular(10) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None]
    polygons = {"circle": _regular(96), "square": _regular(4, phase=-45), "triangle": _regular(3),
                "star": star, "hexagon": _regular(6), "diamond": np.array(
                    [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=float),
                "heart": _heart(), "cross": _cross()}
    if shape not in polygons:
        raise WorldError(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")
    return polygons[shape]


def place(shape: str, jitter: Jitter, size: float) -> np.ndarray:
    """The shape's polygon in pixel coordinates of a `size` x `size` image."""
    a = math.radians(jitter.rotation)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # CCW, y down
    centre = np.array([0.5 + jitter.dx, 0.5 + jitter.dy])
    return (outline(shape) @ rot.T * jitter.scale + centre) * size


def render(shape: str, colour: str, background: str, *, size: int = 64,
           jitter: Jitter = Jitter()) -> Image.Image:
    """An RGB `size` x `size` image of the shape, drawn at 4x and box-downsampled."""
    attrs = Attrs(shape, colour, background)
    if size < 8:
        raise WorldError(f"image size must be at least 8, got {size}")
    big = Image.new("RGB", (size * SUPERSAMPLE,) * 2, COLOURS[attrs.background])
    points = place(shape, jitter, size * SUPERSAMPLE)
    ImageDraw.Draw(big).polygon([tuple(p) for p in points], fill=COLOURS[attrs.colour])
    return big.reduce(SUPERSAMPLE)


# ---- samples and documents -----------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One rendered image + one spoken clip of its caption."""

    name: str  # "train-000123": file stem of its image and audio
    index: int
    split: str  # "train" | "heldout-seen" | "heldout-unseen"
    attrs: Attrs
    jitter: Jitter
    voice: str
    rate: int
    pitch: int

    @property
    def image(self) -> str:
        return f"images/{self.name}.png"

    @property
    def audio(self) -> str:
        return f"audio/{self.name}.wav"

    @property
    def words(self) -> str:
        """Where each word of the clip starts (JSON), for the word-by-word documents."""
        return f"audio/{self.name}.words.json"


def choose_unseen(seed: int) -> list[Attrs]:
    """Combinations kept out of training: `N_UNSEEN_PER_VALUE` per shape, per colour and per
    background, and at most one per (shape, colour), (shape, background) and (colour,
    background) pair, so every value and every pair of values is still seen in training.

    Shape s takes colours s + j and backgrounds s + j + d_j (mod 8) for j < 6; the offsets
    d_j and j + d_j are each distinct and d_j != 0, which gives the properties above. The seed
    relabels shapes and colours.
    """
    offsets = (1, 3, 6, 2, 7, 5)
    n, colours = len(SHAPES), list(COLOURS)
    if len(colours) != n or N_UNSEEN_PER_VALUE > len(offsets):
        raise WorldError("choose_unseen needs as many colours as shapes")  # constants changed
    rng = np.random.default_rng([seed, 7])
    shape_of, colour_of = rng.permutation(n), rng.permutation(n)
    chosen = [Attrs(SHAPES[shape_of[s]], colours[colour_of[(s + j) % n]],
                    colours[colour_of[(s + j + offsets[j]) % n]])
              for s in range(n) for j in range(N_UNSEEN_PER_VALUE)]
    return sorted(chosen, key=all_combos().index)


def make_sample(seed: int, split: str, index: int, unseen: list[Attrs]) -> Sample:
    """Sample `index` of `split` ("train" or "heldout"): a pure function of its arguments.

    Each pool (train, held-out seen, held-out unseen) cycles through its combinations in a
    fresh permutation every pass, and through the voices and base rates, so that all are
    balanced; held-out samples alternate between seen and unseen combinations.
    """
    if split == "train":
        pool, kind, slot = _seen(tuple(unseen)), "train", index
    elif split == "heldout":
        kind = "heldout-seen" if index % 2 == 0 else "heldout-unseen"
        pool, slot = (_seen(tuple(unseen)) if index % 2 == 0 else unseen), index // 2
    else:
        raise WorldError(f"unknown split {split!r}")
    stream = {"train": 1, "heldout-seen": 2, "heldout-unseen": 3}[kind]
    order = np.random.default_rng([seed, stream, slot // len(pool)]).permutation(len(pool))
    rng = np.random.default_rng([seed, stream, 1_000_003, index])
    rate = RATES[(slot // len(VOICES)) % len(RATES)]
    return Sample(
        name=f"{split}-{index:06d}", index=index, split=kind, attrs=pool[order[slot % len(pool)]],
        jitter=Jitter.sample(rng), voice=VOICES[slot % len(VOICES)],
        rate=rate + int(rng.integers(-RATE_JITTER, RATE_JITTER + 1)),
        pitch=50 + int(rng.integers(-PITCH_JITTER, PITCH_JITTER + 1)))


@lru_cache(maxsize=4)
def _seen(unseen: tuple[Attrs, ...]) -> list[Attrs]:
    held = set(unseen)
    return [a for a in all_combos() if a not in held]


def documents(sample: Sample, seed: int, onsets: tuple[float, ...]) -> list[dict]:
    """The manifest lines of one sample: one per direction, then one with all three. Where a
    text is followed by its speech, the text is spoken word by word (`spoken_words`)."""
    media = {"image": {"image": sample.image}, "audio": {"audio": sample.audio}}
    meta = {"split": sample.split, "sample": sample.name, "caption": sample.attrs.caption,
            "attrs": asdict(sample.attrs), "voice": sample.voice, "rate": sample.rate,
            "pitch": sample.pitch}
    caption, docs = sample.attrs.caption, []
    for direction in DIRECTIONS:
        source, target = direction.split("->")
        segments = ([{"text": f"{INSTRUCTIONS[target]} {caption}"}] if source == "text"
                    else [{"text": INSTRUCTIONS[target]}, media[source]])
        segments.append({"text": caption} if target == "text" else media[target])
        docs.append({"segments": spoken_words(segments, onsets), "direction": direction,
                     **meta})
    rng = np.random.default_rng([seed, 11, int(sample.split == "train"), sample.index])
    order = [("text", "image", "audio")[i] for i in rng.permutation(3)]
    segments = [{"text": sample.attrs.caption} if m == "text" else media[m] for m in order]
    docs.append({"segments": spoken_words(segments, onsets), "direction": "->".join(order),
                 **meta})
    return docs


def spoken_words(segments: list[dict], onsets: tuple[float, ...]) -> list[dict]:
    """A text segment followed by its speech becomes word by word: the text's instruction
    ("say:") on its own, then each word followed by its span of the clip (`from` its onset
    `to` the next word's), so a model learns which sound each word makes and speaks a text
    one word at a time (`omnitok generate --word-by-word`)."""
    out: list[dict] = []
    spoken = None  # the clip just spoken word by word
    for i, seg in enumerate(segments):
        after = segments[i + 1] if i + 1 < len(segments) else {}
        if seg is spoken:
            continue
        if "text" not in seg or "audio" not in after:
            out.append(seg)
            continue
        head, _, rest = seg["text"].partition(" ")
        instruction = head if head.endswith(":") else ""
        words = (rest if instruction else seg["text"]).split()
        if not words:  # an instruction before speech to read ("write:")
            out.append(seg)
            continue
        spoken = after
        if len(words) != len(onsets):
            raise WorldError(f"{len(onsets)} word onsets for the {len(words)} words of "
                             f"{seg['text']!r}")
        out += [{"text": instruction}] if instruction else []
        for k, word in enumerate(words):
            span = {"from": onsets[k]} if k else {}
            span.update({"to": onsets[k + 1]} if k + 1 < len(words) else {})
            out += [{"text": word}, {"audio": after["audio"], **span}]
    return out


def describe() -> dict:
    """The world's constants, as recorded in world.json."""
    return {"colours": {k: list(v) for k, v in COLOURS.items()}, "shapes": list(SHAPES),
            "voices": list(VOICES), "rates": list(RATES), "rate_jitter": RATE_JITTER,
            "pitch_jitter": PITCH_JITTER, "scale_range": list(SCALE_RANGE),
            "max_rotation": MAX_ROTATION, "directions": list(DIRECTIONS),
            "instructions": INSTRUCTIONS}


# ---- building ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldInfo:
    """What `build_world` wrote."""

    out: Path
    n_train: int  # samples (one image + one clip each)
    n_heldout: int
    n_documents: dict[str, int]  # per manifest
    made: int  # samples whose files were (re)written by this call
    seconds: float


def build_world(out: Path, *, n_train: int, n_heldout: int, seed: int = 0, size: int = 64,
                sample_rate: int = 16000, workers: int = 1, progress: bool = True) -> WorldInfo:
    """Write the world to `out`: train.jsonl, heldout.jsonl, images/, audio/, world.json.

    Resumable: files already present are kept (every file is written atomically), manifests
    are rewritten atomically, and media of samples beyond the requested counts are removed, so
    the result is byte-identical to a fresh build with the same arguments.
    """
    out = Path(out)
    _check_args(n_train, n_heldout, size, sample_rate, workers)
    start = time.perf_counter()
    unseen = choose_unseen(seed)
    config = {"version": FORMAT_VERSION, "seed": seed, "size": size, "sample_rate": sample_rate}
    _claim(out, config)
    samples = ([make_sample(seed, "train", i, unseen) for i in range(n_train)]
               + [make_sample(seed, "heldout", i, unseen) for i in range(n_heldout)])
    todo = [s for s in samples
            if not all((out / p).is_file() for p in (s.image, s.audio, s.words))]
    _remove_stale(out, {Path(p).name for s in samples for p in (s.image, s.audio, s.words)})
    jobs = [(out, s, size, sample_rate) for s in todo]
    with _progress(progress, len(samples), len(samples) - len(todo)) as advance:
        for _ in _run(jobs, workers):
            advance()
    counts = {}
    for split, name in (("train", "train.jsonl"), ("heldout", "heldout.jsonl")):
        docs = [d for s in samples if (s.split == "train") == (split == "train")
                for d in documents(s, seed, read_onsets(out, s))]
        atomic_write_text(out / name, "".join(json.dumps(d) + "\n" for d in docs))
        counts[name] = len(docs)
    world = {**config, **describe(), "unseen": [asdict(a) for a in unseen],
             "n_train": n_train, "n_heldout": n_heldout, "n_documents": counts}
    atomic_write_text(out / "world.json", json.dumps(world, indent=1) + "\n")
    return WorldInfo(out, n_train, n_heldout, counts, len(todo), time.perf_counter() - start)


def _check_args(n_train: int, n_heldout: int, size: int, sample_rate: int, workers: int) -> None:
    if n_train < 1 or n_heldout < 0:
        raise WorldError(f"need n_train >= 1 and n_heldout >= 0, got {n_train}, {n_heldout}")
    if not 16 <= size <= 1024:
        raise WorldError(f"image size must be in [16, 1024], got {size}")
    if not 8000 <= sample_rate <= 48000:
        raise WorldError(f"sample_rate must be in [8000, 48000] Hz, got {sample_rate}")
    if workers < 1:
        raise WorldError(f"workers must be >= 1, got {workers}")


def _claim(out: Path, config: dict) -> None:
    """Refuse a folder that holds something else, or a world built with other settings."""
    marker = out / "world.json"
    if marker.is_file():
        old = read_json_object(marker, WorldError)
        if any(old.get(k) != v for k, v in config.items()):
            was = ", ".join(f"{k}={old.get(k)}" for k in config)
            raise WorldError(f"{out} holds a world built with {was}; "
                             f"use another --out or delete it")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorldError(f"{out} exists and is not a demo world (no world.json)")
    atomic_write_text(marker, json.dumps(config) + "\n")


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete leftover temporary files and media of samples this build does not have."""
    for folder in (out / "images", out / "audio"):
        if folder.is_dir():
            for f in folder.iterdir():
                stale = _MEDIA.fullmatch(f.name) and f.name not in keep
                if stale or (f.name.startswith(".") and f.name.endswith(".tmp")):
                    f.unlink()


def write_sample(out: Path, sample: Sample, size: int, sample_rate: int) -> None:
    """Render and speak one sample; each file is written atomically, existing ones kept."""
    import soundfile as sf

    from omnitok.demo.speech import synthesize_words

    if not (out / sample.image).is_file():
        a = sample.attrs
        image = render(a.shape, a.colour, a.background, size=size, jitter=sample.jitter)
        with atomic_path(out / sample.image) as tmp:
            image.save(tmp, format="PNG")
    if not ((out / sample.audio).is_file() and (out / sample.words).is_file()):
        wav, onsets = synthesize_words(sample.attrs.caption, sample.voice, sample.rate,
                                       sample.pitch, sample_rate)
        if not (out / sample.audio).is_file():
            with atomic_path(out / sample.audio) as tmp:
                sf.write(tmp, wav, sample_rate, subtype="PCM_16", format="WAV")
        words = {"words": sample.attrs.caption.split(), "onsets": list(onsets)}
        atomic_write_text(out / sample.words, json.dumps(words) + "\n")


def read_onsets(out: Path, sample: Sample) -> tuple[float, ...]:
    """The word onsets (seconds) that `write_sample` recorded for the sample's clip."""
    path = out / sample.words
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        onsets = tuple(float(t) for t in data["onsets"])
        words = data["words"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorldError(f"{path}: unreadable word onsets ({e}); delete it and rebuild") from None
    if words != sample.attrs.caption.split() or len(onsets) != len(words):
        raise WorldError(f"{path}: its words are not those of {sample.attrs.caption!r}; "
                         f"delete it and rebuild")
    return onsets


def _write_job(job: tuple) -> None:
    write_sample(*job)


def _run(jobs: list[tuple], workers: int) -> Iterable[None]:
    if workers == 1 or len(jobs) < 2:
        return map(_write_job, jobs)
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"))
    return _drain(pool, jobs)


def _drain(pool: ProcessPoolExecutor, jobs: list[tuple]) -> Iterator[None]:
    with pool:
        yield from pool.map(_write_job, jobs, chunksize=8)


class _progress:
    """A rich progress bar over samples (silent when disabled or not on a terminal)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("demo world"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console,
                            transient=True, disable=not (enabled and console.is_terminal))
        self.task = self.bar.add_task("samples", total=total, completed=done)

    def __enter__(self):
        self.bar.__enter__()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
