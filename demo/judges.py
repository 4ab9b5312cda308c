"""Independent judges for the shapes-and-speech world (no omnitok model or tokenizer inside).

`ImageJudge`: background = median border colour, shape colour = median of the pixels most
unlike the background, shape = best soft IoU against template masks after normalising
position and size by the mask's moments (centroid and area survive blur), searching rotation.

`SpeechJudge`: MFCCs aligned by one-pass dynamic time warping against a word grammar
"a <colour> <shape> on a <colour> background" per training voice, with word templates cut from
espeak-ng renderings; it recognises the three slots jointly and returns the whole caption.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omnitok.demo.speech import NATIVE_RATE, resample, speak, trim_bounds
from omnitok.demo.world import COLOURS, MAX_ROTATION, SHAPES, VOICES, Attrs, WorldError, outline

ATTRIBUTES = ("shape", "colour", "background")


@dataclass(frozen=True)
class Verdict:
    """A judge's reading; `attrs` is None where the reading is not a valid combination."""

    shape: str
    colour: str
    background: str
    score: float  # image: IoU of the best template; speech: mean alignment cost per frame

    @property
    def attrs(self) -> Attrs | None:
        try:
            return Attrs(self.shape, self.colour, self.background)
        except WorldError:
            return None


def _accuracy(verdicts: list[Verdict], truths: list[Attrs], seconds: float) -> dict:
    n = len(truths)
    hits = {a: sum(getattr(v, a) == getattr(t, a) for v, t in zip(verdicts, truths))
            for a in ATTRIBUTES}
    right = sum(v.attrs == t for v, t in zip(verdicts, truths))
    return {"n": n, **{a: hits[a] / max(n, 1) for a in ATTRIBUTES}, "all": right / max(n, 1),
            "seconds_per_item": seconds / max(n, 1)}


# ---- images --------------------------------------------------------------------------------
class ImageJudge:
    """Reads (shape, colour, background) off an image of any size."""

    grid = 64  # canonical template grid, covering [-extent, extent] in units of sqrt(area)
    extent = 1.15
    rotations = np.arange(-MAX_ROTATION - 3, MAX_ROTATION + 3.5, 1.5)

    def __init__(self) -> None:
        self.palette = np.array(list(COLOURS.values()), dtype=np.float32)  # (C, 3)
        self.names = list(COLOURS)

    @cached_property
    def templates(self) -> np.ndarray:
        """(S * R, G, G) soft masks, every shape at every rotation, area-normalised."""
        return np.stack([self._template(s, r) for s in SHAPES for r in self.rotations])

    def _template(self, shape: str, rotation: float) -> np.ndarray:
        a = np.radians(rotation)
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        poly = outline(shape) @ rot.T
        area, centroid = _polygon_moments(poly)
        unit = self.grid * 4 / (2 * self.extent)  # supersampled pixels per sqrt(area)
        pts = (poly - centroid) / np.sqrt(area) * unit + self.grid * 2
        big = Image.new("L", (self.grid * 4,) * 2, 0)
        ImageDraw.Draw(big).polygon([tuple(p) for p in pts], fill=255)
        return np.asarray(big.reduce(4), dtype=np.float32) / 255.0

    def classify(self, image: Image.Image | np.ndarray | str | Path) -> Verdict:
        x = _rgb(image)  # (H, W, 3) float32
        bg = np.median(np.concatenate([x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3),
                                       x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)]), 0)
        dist = np.linalg.norm(x - bg, axis=-1)
        far = dist >= 0.5 * np.quantile(dist, 0.995)
        core = dist >= np.quantile(dist[far], 0.5) if far.any() else far
        fg = np.median(x[core], 0) if core.any() else bg
        colour, background = self._nearest(fg), self._nearest(bg)
        direction = fg - bg
        proj = (x - bg) @ direction / max(float(direction @ direction), 1e-6)  # 0 bg .. 1 fg
        mask = np.clip((proj - 0.25) * 2, 0, 1)  # symmetric about 0.5: ignores mild noise
        shape, iou = self._shape(mask)
        return Verdict(shape, colour, background, iou)

    def _nearest(self, rgb: np.ndarray) -> str:
        return self.names[int(np.argmin(np.linalg.norm(self.palette - rgb, axis=1)))]

    def _shape(self, mask: np.ndarray) -> tuple[str, float]:
        area = float(mask.sum())
        if area < 4:
            return SHAPES[0], 0.0
        h, w = mask.shape
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        cy, cx = (mask * ys).sum() / area, (mask * xs).sum() / area
        u = (np.arange(self.grid) + 0.5) / self.grid * 2 * self.extent - self.extent
        xs = cx + u[None, :] * np.sqrt(area) - 0.5  # (G, G) sample points, pixel indices
        ys = cy + u[:, None] * np.sqrt(area) - 0.5
        m = _bilinear(mask.astype(np.float32), *np.broadcast_arrays(xs, ys))
        t = self.templates
        iou = np.minimum(t, m).sum((1, 2)) / np.maximum(t, m).sum((1, 2))
        best = int(iou.argmax())
        return SHAPES[best // len(self.rotations)], float(iou[best])

    def score(self, items: Iterable[tuple[Image.Image | np.ndarray | str | Path, Attrs]]) -> dict:
        """Accuracy per attribute and for all three, over (image, true attributes) pairs."""
        start, verdicts, truths = time.perf_counter(), [], []
        for image, truth in items:
            verdicts.append(self.classify(image))
            truths.append(truth)
        return _accuracy(verdicts, truths, time.perf_counter() - start)


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """`image` (H, W) sampled at fractional indices (xs, ys); zero outside."""
    padded = np.pad(image, 1)
    x0, y0 = np.floor(xs), np.floor(ys)
    wx, wy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    h, w = padded.shape
    xi = np.clip(x0.astype(np.int64) + 1, 0, w - 2)
    yi = np.clip(y0.astype(np.int64) + 1, 0, h - 2)
    inside = (x0 >= -1) & (x0 < w - 2) & (y0 >= -1) & (y0 < h - 2)
    top = padded[yi, xi] * (1 - wx) + padded[yi, xi + 1] * wx
    bottom = padded[yi + 1, xi] * (1 - wx) + padded[yi + 1, xi + 1] * wx
    return np.where(inside, top * (1 - wy) + bottom * wy, 0.0).astype(np.float32)


def _polygon_moments(poly: np.ndarray) -> tuple[float, np.ndarray]:
    """Area and centroid of a simple polygon (shoelace)."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    return abs(area), centroid


def _rgb(image: Image.Image | np.ndarray | str | Path) -> np.ndarray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3 or min(x.shape[:2]) < 8:
        raise WorldError(f"expected an RGB image of at least 8x8, got shape {x.shape}")
    return x


# ---- speech --------------------------------------------------------------------------------
_SLOTS = ("a", "colour", "shape", "on a", "background colour", "background")
_SLOT_WORDS = (0, 1, 2, 3, 5, 6)  # index of each slot's first word in the caption
_ATTR_SLOT = {"colour": 1, "shape": 2, "background": 4}


class SpeechJudge:
    """Recognises which caption an utterance says (and so its three attributes).

    For each voice, eight espeak-ng captions are rendered once so that every colour appears
    in both colour slots and every shape in the shape slot; espeak-ng's word events cut them
    into word templates. An utterance is aligned against the grammars of all voices at once;
    the cheapest path names the caption.
    """

    sample_rate = 16000
    n_fft, win = 512, 400
    hop = 160  # 10 ms MFCC frames ...
    pool = 2  # ... averaged in pairs: the alignment runs on 20 ms frames
    floor_db = 35.0  # log-mel floor below the loudest bin: robust to noise (10 dB SNR)

    def __init__(self, voices: tuple[str, ...] = VOICES, rate: int = 155) -> None:
        self.voices, self.rate = tuple(voices), rate
        self._window = np.hanning(self.win + 1)[:-1].astype(np.float32)
        self._fbank = _mel_filters(self.n_fft // 2 + 1, 60.0, 6000.0, 40, self.sample_rate)
        self._dct = _dct_matrix(40, 17)[:, 1:]  # (40, 16): c0 (loudness) dropped

    def features(self, wav: np.ndarray, sample_rate: int, trim: bool = True) -> np.ndarray:
        """(T, 16) MFCCs c1..c16 of the (trimmed) utterance, 20 ms frames, mean-normalised."""
        x = resample(np.asarray(wav, dtype=np.float32), sample_rate, self.sample_rate)
        if trim:
            x = x[slice(*trim_bounds(x, self.sample_rate))]
        x = np.pad(x, (0, max(0, self.win - len(x))))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.win)[:: self.hop]
        power = np.abs(np.fft.rfft(frames * self._window, self.n_fft)) ** 2  # (T, F)
        mel = _dot(power.astype(np.float32), self._fbank)  # (T, 40)
        floor = mel.max() * 10 ** (-self.floor_db / 10) + 1e-10
        c = _dot(np.log(mel + floor), self._dct)  # (T, 16)
        if len(c) < self.pool:  # under one pooled frame of sound: pad with its last frame
            c = np.pad(c, ((0, self.pool - len(c)), (0, 0)), mode="edge")
        n = len(c) // self.pool
        c = c[: n * self.pool].reshape(n, self.pool, -1).mean(1)
        return (c - c.mean(0)).astype(np.float32)

    @cached_property
    def network(self) -> _Network:
        """The templates and the grammar: built once (about a second), deterministic."""
        return _Network.build([self.word_templates(v) for v in self.voices])

    def recognise(self, wav: np.ndarray, sample_rate: int = 16000) -> Verdict:
        return self.network.decode(self.features(wav, sample_rate))

    def score(self, items: Iterable[tuple[np.ndarray | str | Path, Attrs]]) -> dict:
        """Accuracy per attribute and for the whole caption over (audio, true attributes);
        audio is a path or float samples at 16 kHz."""
        import soundfile as sf

        self.network  # noqa: B018  (built before the clock starts)
        start, verdicts, truths = time.perf_counter(), [], []
        for audio, truth in items:
            rate = self.sample_rate
            if isinstance(audio, (str, Path)):
                audio, rate = sf.read(audio, dtype="float32", always_2d=True)
                audio = audio.mean(1)
            verdicts.append(self.recognise(audio, rate))
            truths.append(truth)
        return _accuracy(verdicts, truths, time.perf_counter() - start)

    def word_templates(self, voice: str) -> list[list[tuple[str, np.ndarray]]]:
        """Per slot, its alternatives as (word, MFCC frames)."""
        colours = list(COLOURS)
        n = max(len(colours), len(SHAPES))
        slots: list[dict[str, np.ndarray]] = [{} for _ in _SLOTS]
        for k in range(n):
            a = Attrs(SHAPES[k % len(SHAPES)], colours[k % len(colours)],
                      colours[(k + 3) % len(colours)])
            words = a.caption.split()
            for s, frames in enumerate(self._cut(a.caption, voice)):
                label = " ".join(words[_SLOT_WORDS[s]:(_SLOT_WORDS + (7,))[s + 1]])
                slots[s].setdefault(label, frames)
        return [list(slot.items()) for slot in slots]

    def _cut(self, caption: str, voice: str) -> list[np.ndarray]:
        """The caption spoken in `voice`, cut into its slots at espeak-ng's word onsets."""
        utt = speak(caption, voice, self.rate)
        x = utt.samples.astype(np.float32) / 32768.0
        lo, hi = trim_bounds(x, NATIVE_RATE)
        feats = self.features(x[lo:hi], NATIVE_RATE, trim=False)
        if len(utt.word_onsets) != 7:
            raise WorldError(f"espeak-ng reported {len(utt.word_onsets)} words for {caption!r}")
        frame = NATIVE_RATE * self.hop * self.pool / self.sample_rate  # native samples
        edges = [max(0, round((utt.word_onsets[w] - lo) / frame)) for w in _SLOT_WORDS]
        edges.append(len(feats))
        return [feats[edges[i]:max(edges[i + 1], edges[i] + 2)] for i in range(len(_SLOTS))]


@dataclass
class _Network:
    """All voices' word grammars flattened into one array of template frames (states).

    Each utterance frame, a state is reached from itself, the previous frame or the one before
    that (tempo from 0.5x to any slowness); the first frames of a word are reached from the
    best exit of the previous slot of the same voice. Every path consumes every frame, so the
    costs of competing paths compare directly. `code` carries the slot choices along in
    mixed radix (one digit per slot).
    """

    feats: np.ndarray  # (S, D) template frames
    p1: np.ndarray  # (S,) index into [states, entries, inf] of the one-step predecessor
    p2: np.ndarray  # (S,) two-step predecessor
    exits: np.ndarray  # (G, A) exit states of the slot before each group (S + G: none)
    exit_alt: np.ndarray  # (G, A) which alternative each exit ends
    n_alt: np.ndarray  # (G,) alternatives in the slot before each group (1 for the first)
    first: np.ndarray  # (G,) the group is the first slot of its voice
    finals: np.ndarray  # states where a path may end
    labels: list  # [voice][slot] -> words of each alternative
    voice_of: np.ndarray  # (S,) which voice each state belongs to
    stay_penalty: float = 0.1

    @classmethod
    def build(cls, voices: list[list[list[tuple[str, np.ndarray]]]]) -> _Network:
        n_slots, n_groups = len(_SLOTS), len(_SLOTS) * len(voices)
        feats, p1, p2, voice_of, ends = [], [], [], [], []  # ends[g]: last state per alternative
        offset = 0
        for v, slots in enumerate(voices):
            for s, alternatives in enumerate(slots):
                g, ends_g = v * n_slots + s, []
                for _, frames in alternatives:
                    i = np.arange(len(frames))
                    p1.append(np.where(i >= 1, offset + i - 1, -1 - g))  # -1-g: entry of g
                    p2.append(np.where(i >= 2, offset + i - 2, np.where(i == 1, -1 - g,
                                                                        -1 - n_groups)))
                    feats.append(frames)
                    voice_of.append(np.full(len(frames), v))
                    offset += len(frames)
                    ends_g.append(offset - 1)
                ends.append(ends_g)
        n = offset
        fix = lambda p: np.where(p >= 0, p, n - 1 - p)  # noqa: E731  (-1-g -> n + g)
        exits = np.full((n_groups, max(map(len, ends))), n + n_groups)
        exit_alt = np.zeros_like(exits)
        n_alt = np.ones(n_groups, dtype=np.int64)
        first = np.arange(n_groups) % n_slots == 0
        for g in np.nonzero(~first)[0]:
            exits[g, :len(ends[g - 1])] = ends[g - 1]
            exit_alt[g, :len(ends[g - 1])] = np.arange(len(ends[g - 1]))
            n_alt[g] = len(ends[g - 1])
        finals = np.array([e - d for g in range(n_slots - 1, n_groups, n_slots)
                           for e in ends[g] for d in range(3)])
        labels = [[[w for w, _ in alts] for alts in slots] for slots in voices]
        return cls(np.concatenate(feats), fix(np.concatenate(p1)), fix(np.concatenate(p2)),
                   exits, exit_alt, n_alt, first, finals, labels, np.concatenate(voice_of))

    def decode(self, x: np.ndarray) -> Verdict:
        """x: (T, D) utterance features -> the best caption."""
        d = _euclidean(x, self.feats)  # (T, S)
        n, n_groups = len(self.feats), len(self.n_alt)
        rows = np.arange(n_groups)
        cost = np.full(n, np.inf, dtype=np.float32)
        code = np.zeros(n, dtype=np.int64)
        ext = np.full(n + n_groups + 1, np.inf, dtype=np.float32)  # [states, entries, inf]
        ext_code = np.zeros(n + n_groups + 1, dtype=np.int64)
        for t in range(len(x)):
            ext[:n], ext_code[:n] = cost, code
            vals = ext[self.exits]  # (G, A)
            k = vals.argmin(1)
            ext[n:-1] = np.where(self.first, 0.0 if t == 0 else np.inf, vals[rows, k])
            ext_code[n:-1] = ext_code[self.exits[rows, k]] * self.n_alt + self.exit_alt[rows, k]
            stay, one, two = cost + self.stay_penalty, ext[self.p1], ext[self.p2]
            code = np.where(one <= stay, ext_code[self.p1], code)
            best = np.minimum(one, stay)
            code = np.where(two < best, ext_code[self.p2], code)
            cost = np.minimum(two, best) + d[t]
        end = self.finals[int(cost[self.finals].argmin())]
        return self._verdict(end, int(code[end]), float(cost[end]) / max(len(x), 1))

    def _verdict(self, end: int, code: int, score: float) -> Verdict:
        labels = self.labels[int(self.voice_of[end])]
        choice = [0] * len(_SLOTS)
        for s in range(len(_SLOTS) - 2, -1, -1):  # the last slot's choice is not folded in
            choice[s], code = code % len(labels[s]), code // len(labels[s])
        words = {a: labels[s][choice[s]] for a, s in _ATTR_SLOT.items()}
        return Verdict(words["shape"], words["colour"], words["background"], score)


def _mel_filters(n_freqs: int, f_min: float, f_max: float, n_mels: int,
                 sample_rate: int) -> np.ndarray:
    """(n_freqs, n_mels) triangular filters on the HTK mel scale."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges = 700.0 * (10 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595.0) - 1)
    freqs = np.linspace(0, sample_rate // 2, n_freqs)[:, None]
    rise = (freqs - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - freqs) / np.diff(edges)[None, 1:]
    return np.maximum(0.0, np.minimum(rise, fall)).astype(np.float32)


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) orthonormal DCT-II."""
    k, n = np.arange(n_out)[None, :], np.arange(n_in)[:, None]
    dct = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    dct[:, 0] /= np.sqrt(2.0)
    return dct.astype(np.float32)


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * _dot(a, b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b without BLAS: its threads spin badly on a busy machine (5-10x slower here)."""
    return np.einsum("ik,kj->ij", a, b, optimize=False)
