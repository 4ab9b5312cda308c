"""Scores of `omnitok eval`: each generated answer judged against its line's ground truth.

- text answers: exact caption (the answer, stripped, equals the caption), word error rate
  (word-level Levenshtein distance / reference words, summed over a set of lines), and the
  attributes read off the words of a 7-word caption;
- image answers: `ImageJudge` reads shape, colour and background;
- speech answers: `SpeechJudge` recognises the caption (and so the three attributes).

A set of lines scores `all` (every attribute right, or the exact caption for text) and one
accuracy per attribute; text also `wer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from omnitok.demo.eval_data import ORDER, SPLITS, EvalItem
from omnitok.demo.judges import ATTRIBUTES, ImageJudge, SpeechJudge
from omnitok.demo.speech import trim_bounds
from omnitok.demo.world import Attrs

TRUTH_MIN = 0.98  # a judge below this on ground truth is not a judge
MIN_SPEECH_SECONDS = 0.2  # less sound than this (silence trimmed) cannot say a caption


def word_errors(hypothesis: str, reference: str) -> int:
    """Substitutions + deletions + insertions turning `reference` into `hypothesis`, in
    words (Levenshtein distance over whitespace-separated words)."""
    hyp, ref = hypothesis.split(), reference.split()
    row = list(range(len(hyp) + 1))  # distances from the empty reference prefix
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(pairs: Sequence[tuple[str, str]]) -> float:
    """Word error rate of (hypothesis, reference) pairs: total errors / total reference words
    (as jiwer computes it over a list)."""
    words = sum(len(ref.split()) for _, ref in pairs)
    return sum(word_errors(h, r) for h, r in pairs) / max(words, 1)


@dataclass
class Outcome:
    """How one answer scored: `heard` is the answer (text) or what the judge read (media)."""

    line: int
    direction: str
    split: str
    prompt: str
    caption: str
    correct: bool
    hits: dict[str, bool]
    heard: str = ""
    errors: int = 0  # word errors (text answers)
    words: int = 0  # reference words (text answers)
    file: str = ""  # where the generated media was written (relative to the eval folder)
    extra: dict = field(default_factory=dict)


def outcome(item: EvalItem, read: Attrs | dict | None, correct: bool, **kw) -> Outcome:
    """The outcome of `item`'s answer, whose attributes were read as `read` (None: none)."""
    get = (lambda a: read.get(a)) if isinstance(read, dict) else (lambda a: getattr(read, a))
    hits = {a: read is not None and get(a) == getattr(item.attrs, a) for a in ATTRIBUTES}
    return Outcome(item.line, item.direction, item.split, item.prompt_text(), item.caption,
                   correct, hits, **kw)


def judge_text(text: str, item: EvalItem) -> Outcome:
    """A text answer against the line's caption."""
    hyp = text.strip()
    words = hyp.lower().rstrip(".").split()
    read = ({"colour": words[1], "shape": words[2], "background": words[5]}
            if len(words) == 7 else None)
    return outcome(item, read, hyp == item.caption.strip(), heard=hyp,
                   errors=word_errors(hyp, item.caption), words=len(item.caption.split()))


def judge_image(image: np.ndarray | None, item: EvalItem, judge: ImageJudge) -> Outcome:
    """An (H, W, 3) image answer read by the image judge; None (no image) is wrong."""
    if image is None:
        return outcome(item, None, False)
    v = judge.classify(image)
    return outcome(item, v, v.attrs == item.attrs, heard=_reading(v),
                   extra={"iou": round(v.score, 4)})


def judge_speech(wav: np.ndarray | None, rate: int, item: EvalItem,
                 judge: SpeechJudge) -> Outcome:
    """A mono speech answer (float samples at `rate`) recognised by the speech judge; no
    answer, or less than MIN_SPEECH_SECONDS of sound, is wrong."""
    lo, hi = (0, 0) if wav is None else trim_bounds(np.asarray(wav, dtype=np.float32), rate)
    if hi - lo < MIN_SPEECH_SECONDS * rate:
        return outcome(item, None, False)
    v = judge.recognise(np.asarray(wav, dtype=np.float32), rate)
    return outcome(item, v, v.attrs == item.attrs, heard=_reading(v),
                   extra={"cost": round(v.score, 4)})


def _reading(v) -> str:
    return f"a {v.colour} {v.shape} on a {v.background} background"


def summarise(outcomes: Sequence[Outcome], kind: str) -> dict:
    """n, all (accuracy), one accuracy per attribute; text answers also wer and exact."""
    n = len(outcomes)
    out: dict = {"n": n, "all": sum(o.correct for o in outcomes) / max(n, 1)}
    for a in ATTRIBUTES:
        out[a] = sum(o.hits[a] for o in outcomes) / max(n, 1)
    if kind == "text":
        out["exact"] = out["all"]
        out["wer"] = sum(o.errors for o in outcomes) / max(sum(o.words for o in outcomes), 1)
    return out


def aggregate(outcomes: Sequence[Outcome], kinds: dict[str, str]) -> dict[str, dict]:
    """{direction: {split: summary}} in table order; `kinds` maps direction -> target kind."""
    scores: dict[str, dict] = {}
    for direction in ORDER:
        mine = [o for o in outcomes if o.direction == direction]
        if mine:
            scores[direction] = {split: summarise([o for o in mine if o.split == split],
                                                  kinds[direction])
                                 for split in SPLITS if any(o.split == split for o in mine)}
    return scores


def primary(direction: str, summary: dict) -> tuple[str, float]:
    """The headline metric of a direction: WER for speech->text, otherwise accuracy."""
    if direction == "audio->text":
        return "wer", summary["wer"]
    return "all", summary["all"]
