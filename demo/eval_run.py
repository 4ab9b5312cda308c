"""One direction of `omnitok eval`: prompts encoded, answers generated, judged and saved.

Generated images and speech are written to `samples/<direction>-<line>.png|wav` under the
eval's output folder (text answers are recorded in eval.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omnitok import OmnitokError, atomic_path
from omnitok.demo.contact_sheet import Cell
from omnitok.demo.eval_baselines import to_pixels
from omnitok.demo.eval_data import EvalItem
from omnitok.demo.eval_metrics import Outcome, judge_image, judge_speech, judge_text
from omnitok.generate.generator import (
    Answer,
    GenerationSettings,
    Generator,
    several_passes,
)
from omnitok.generate.sampling import ModalitySampling, SamplingParams
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment


def eval_sampling() -> ModalitySampling:
    """`omnitok generate`'s sampling, except text: greedy, with no repetition penalty (a
    caption repeats "a"), since a text answer is scored as one exact caption; and images at
    temperature 0.7 (on 40 training prompts, text->image got 15-17.5% of images all right at
    0.7 against 5-7.5% at 1.0, for two checkpoints of the built-in default)."""
    return ModalitySampling(text=SamplingParams(0.0, 0, 1.0, 1.0),
                            image=replace(ModalitySampling().image, temperature=0.7))


@dataclass
class EvalSettings:
    """How answers are generated (recorded in eval.json)."""

    batch_size: int = 16
    greedy: bool = False
    sampling: ModalitySampling = field(default_factory=eval_sampling)
    cfg_scale: float = 1.0
    max_text_tokens: int = 32
    max_audio_seconds: float = 6.0
    seed: int = 0
    shuffle_image_codes: bool = False
    rerank: int = 1
    via_text: bool = False
    image_weight: float = 1.0  # text --rerank: weight of log p(prompt image | text)
    speech_weight: float = 0.0  # text --rerank: weight of log p(prompt speech | text)
    word_by_word: bool = False  # speech from text one word at a time
    max_word_seconds: float = 1.5
    word_cfg_scale: float | None = None  # guidance of each word (default: cfg_scale)
    reader: list[str] = field(default_factory=lambda: ["auto"])  # --rerank's readers: auto
    # (the checkpoint's), none, or reader folders


@dataclass
class Prepared:
    """A direction ready to generate: its lines, their encoded prompts and the settings."""

    direction: str
    items: list[EvalItem]
    docs: list[Document]
    settings: GenerationSettings


@dataclass
class DirectionRun:
    """What one direction produced."""

    direction: str
    outcomes: list[Outcome]
    cells: list[Cell]
    seconds: float  # generation
    judge_seconds: float  # decoding, judging and saving the answers
    counts: dict  # lines, generated ids


def generation_settings(kind: str, s: EvalSettings) -> GenerationSettings:
    """`--to kind` with the eval's settings (guidance only for image and audio answers)."""
    return GenerationSettings(
        target=kind, max_new_tokens=s.max_text_tokens if kind == "text" else None,
        max_audio_seconds=s.max_audio_seconds, sampling=s.sampling, greedy=s.greedy,
        cfg_scale=s.cfg_scale if kind != "text" else 1.0, seed=s.seed, batch_size=s.batch_size,
        rerank=s.rerank, via_text=s.via_text and kind != "text", image_weight=s.image_weight,
        speech_weight=s.speech_weight)


def uses_media_reading(direction: str) -> bool:
    """Directions answered from media alone (audio->image, image->audio): where --via-text
    applies."""
    prompt, _, answer = direction.partition("->")
    return answer != "text" and "text" not in prompt.split("+")


def prepare(gen: Generator, direction: str, items: list[EvalItem],
            settings: EvalSettings) -> Prepared:
    """Encode the prompts and check that each fits the model, before any generation."""
    gs = generation_settings(items[0].kind, settings)
    gs.via_text = gs.via_text and uses_media_reading(direction)
    gs.word_by_word = settings.word_by_word and gs.target == "audio"  # prompts ending with
    # words are spoken word by word, the others whole (Generator._word_by_word)
    gs.max_word_seconds, gs.word_cfg_scale = settings.max_word_seconds, settings.word_cfg_scale
    docs = [gen.tokenizers.document(list(it.prompt)) for it in items]
    if settings.shuffle_image_codes:
        docs = [shuffled_image_codes(doc, settings.seed + it.line) for doc, it in zip(docs, items)]
    try:
        gen.requests(docs, gs, gen.grammar(gs))
    except OmnitokError as e:
        raise OmnitokError(f"{direction}: {e}") from None
    return Prepared(direction, items, docs, gs)


def shuffled_image_codes(doc: Document, seed: int) -> Document:
    """`doc` with the codes of each image segment in a random order (the same multiset of codes
    on the same grid): what a model that reads images as a bag of codes cannot tell apart."""
    g = torch.Generator().manual_seed(seed)
    segments = []
    for seg in doc.segments:
        if isinstance(seg, ImageSegment):
            flat = seg.codes.reshape(-1)
            order = torch.randperm(flat.numel(), generator=g)
            seg = ImageSegment(flat[order].reshape(seg.codes.shape))
        segments.append(seg)
    return Document(segments)


def generate(gen: Generator, docs: list[Document], settings: GenerationSettings,
             progress: Callable[[int], None]) -> list[Answer]:
    """Answers in order; `progress(n)` is told how many are finished as batches complete."""
    if several_passes(settings):  # whole batches at a time
        answers: list[Answer] = []
        for start in range(0, len(docs), settings.batch_size):
            chunk = docs[start:start + settings.batch_size]
            answers += gen.generate(chunk, replace(settings, seed=settings.seed + start))
            progress(len(answers))
        return answers
    requests: list = []

    def opened(batch: list) -> None:
        progress(len(requests))
        requests.extend(batch)

    for _ in gen.stream(docs, settings, opened):
        pass
    progress(len(requests))
    return [gen.answer(r) for r in requests]


def run_direction(gen: Generator, job: Prepared, out: Path, judges: dict,
                  progress: Callable[[int], None] = lambda n: None) -> DirectionRun:
    """Generate, judge and save every answer of one direction."""
    t0 = time.perf_counter()
    answers = generate(gen, job.docs, job.settings, progress)
    t1 = time.perf_counter()
    outcomes, cells = [], []
    for item, answer in zip(job.items, answers):
        outcome, pixels = judge_answer(gen.tokenizers, item, answer.document, judges, out)
        if answer.via is not None:
            outcome.extra["via"] = answer.via
        if answer.score is not None:
            outcome.extra["read_back"] = round(answer.score, 4)
        outcomes.append(outcome)
        if pixels is not None:
            tag = "[unseen] " if item.split == "heldout-unseen" else ""
            cells.append(Cell(pixels, tag + item.prompt_text(), outcome.correct))
    counts = {"lines": len(answers), "generated_ids": sum(len(a.ids) for a in answers)}
    return DirectionRun(job.direction, outcomes, cells, round(t1 - t0, 3),
                        round(time.perf_counter() - t1, 3), counts)


@torch.inference_mode()
def judge_answer(tok: TokenizerBundle, item: EvalItem, doc: Document, judges: dict,
                 out: Path) -> tuple[Outcome, np.ndarray | None]:
    """The answer's target segment decoded, judged and (media) saved; the image's pixels."""
    if item.kind == "text":
        text = " ".join(s.text for s in doc if isinstance(s, TextSegment))
        return judge_text(text, item), None
    kind = ImageSegment if item.kind == "image" else AudioSegment
    seg = next((s for s in doc if isinstance(s, kind) and s.codes.numel() > 0), None)
    rel = Path("samples") / f"{slug(item.direction)}-{item.line:05d}"
    if item.kind == "image":
        pixels = None if seg is None else to_pixels(tok.image.decode(seg.codes[None])[0])
        outcome = judge_image(pixels, item, judges["image"])
        if pixels is not None:
            save_png(pixels, out / rel.with_suffix(".png"))
            outcome.file = str(rel.with_suffix(".png"))
        return outcome, pixels
    from omnitok.generate.outputs import decode_audio
    from omnitok.tokenizers.audio import save_audio

    wav = None if seg is None else decode_audio(tok, seg.codes).float()  # (C, n)
    rate = tok.audio.sample_rate
    outcome = judge_speech(None if wav is None else wav.mean(0).numpy(), rate, item,
                           judges["audio"])
    if wav is not None:
        path = out / rel.with_suffix(".wav")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_audio(wav, rate, path)
        outcome.file = str(rel.with_suffix(".wav"))
    return outcome, None


def slug(direction: str) -> str:
    """A file-name form of a direction: "text->image" -> "text_to_image"."""
    return direction.replace("->", "_to_").replace("+", "_")


def save_png(pixels: np.ndarray, path: Path) -> Path:
    """(H, W, 3) uint8 pixels as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path
