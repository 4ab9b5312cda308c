"""`omnitok demo` with a trained shapes-and-speech checkpoint: one answer in every modality.

From one built-in caption it draws the image (`draw: <caption>`), speaks the caption
(`say: <caption>`, word by word, each word guided away from the speech without it, audio at
temperature 0.7), then captions its own image (`write:` + the image): text -> image,
text -> audio and image -> text with one model, written as PNG, WAV and TXT. Each answer is
the best of RERANK candidates (`--rerank`): the image and the speech as the checkpoint's
caption and speech readers read them (the model itself without them), the caption by the
model's likelihood plus the caption reader's reading of the image.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from omnitok.generate.generator import GenerationSettings, Generator
from omnitok.generate.outputs import write_answer
from omnitok.model.checkpoint import load_checkpoint
from omnitok.tokenizers.document import Document, ImageSegment, TextSegment

CAPTION = "a red circle on a blue background"
RERANK = 8
WORD_CFG_SCALE = 3.0  # speech: guidance of each word (README, "Speech word by word")
SPEECH_TEMPERATURE = 0.7


def showcase(ckpt: Path, out: Path, *, caption: str = CAPTION, seed: int = 0,
             backend: str = "sdpa", dtype=None) -> list[Path]:
    """Generate the image, the speech and the caption of the image; the files written."""
    t0 = time.perf_counter()
    gen = Generator(load_checkpoint(ckpt, dtype=dtype, attn_backend=backend))
    print(f"checkpoint  {ckpt} ({gen.model.args.num_params() / 1e6:.1f}M parameters) loaded "
          f"in {time.perf_counter() - t0:.1f} s")
    files = []
    jobs = [("image", Document([TextSegment(f"draw: {caption}")]), 2.0),
            ("audio", Document([TextSegment(f"say: {caption}")]), WORD_CFG_SCALE)]
    image = None
    for target, prompt, cfg in jobs:
        if getattr(gen.tokenizers, target) is None:
            print(f"{target:<11} skipped: the checkpoint has no {target} tokenizer")
            continue
        answer, seconds = _answer(gen, prompt, target, cfg, seed)
        files += _write(gen, answer.document, out, target, seconds, prompt)
        if target == "image":
            image = answer.document[0]
    if image is not None:
        prompt = Document([TextSegment("write:"), ImageSegment(image.codes)])
        answer, seconds = _answer(gen, prompt, "text", 1.0, seed)
        files += _write(gen, answer.document, out, "caption", seconds, "write: + the image")
    return files


def _answer(gen: Generator, prompt: Document, target: str, cfg: float, seed: int):
    settings = GenerationSettings(target=target, cfg_scale=cfg, seed=seed, max_new_tokens=None
                                  if target != "text" else 32, max_audio_seconds=6.0,
                                  rerank=RERANK)
    if target == "text":
        settings.greedy = True
    if target == "audio":
        settings.word_by_word = True
        settings.sampling = replace(settings.sampling, audio=replace(
            settings.sampling.audio, temperature=SPEECH_TEMPERATURE))
    t0 = time.perf_counter()
    [answer] = gen.generate([prompt], settings)
    return answer, time.perf_counter() - t0


def _write(gen: Generator, doc: Document, out: Path, stem: str, seconds: float,
           prompt) -> list[Path]:
    entries = write_answer(gen.tokenizers, doc, out, stem)
    for entry in entries:
        shown = f" {entry['text']!r}" if entry["kind"] == "text" else ""
        label = prompt if isinstance(prompt, str) else prompt[0].text
        print(f"{stem:<11} {label!r} -> {entry['path']}{shown} ({seconds:.1f} s)")
    return [Path(e["path"]) for e in entries]
