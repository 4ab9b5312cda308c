"""`omnitok generate`: prompts in any mix of text, images and audio; answers as files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

import torch

from omnitok import OmnitokError, atomic_write_text
from omnitok.generate.demo import builtin_default, pick_dtype
from omnitok.generate.generator import (
    Answer,
    GenerationSettings,
    Generator,
    check_reading,
    check_words,
    several_passes,
)
from omnitok.generate.outputs import AnswerStream, write_answer
from omnitok.generate.prompts import (
    PromptPart,
    document_from_parts,
    documents_from_file,
    text_document,
)
from omnitok.generate.sampling import ModalitySampling
from omnitok.kernels import describe_backend, resolve_backend
from omnitok.model.checkpoint import load_checkpoint

Target = Literal["text", "image", "audio", "auto"]
DType = Literal["auto", "float32", "bfloat16"]


def default_checkpoint() -> Path:
    """The built-in default model shipped with omnitok."""
    path = builtin_default()
    if path is None:
        raise OmnitokError("no checkpoint given and no built-in default model is installed: "
                           "pass a checkpoint folder (see `omnitok model init`)")
    return path


def generate_command(
    ckpt: Path | None = None, *, prompt: list[PromptPart] | None = None,
    prompts: Path | None = None, to: Target = "auto", output: Path = Path("out/generate"),
    stream: bool = False, batch_size: int = 8, max_new_tokens: int | None = None,
    max_audio_seconds: float = 10.0, min_audio_seconds: float = 0.0,
    sampling: ModalitySampling | None = None, greedy: bool = False, cfg_scale: float = 1.0,
    cfg_interval: list[float] | None = None, negative_prompt: str | None = None, seed: int = 0,
    attn: Literal["sdpa", "triton", "flash"] | None = None, dtype: DType = "auto",
    device: str = "cpu", compile: bool = False, quiet: bool = False, rerank: int = 1,
    via_text: bool = False, read_instruction: str = "write:",
    image_weight: float = 1.0, speech_weight: float = 0.0, word_by_word: bool = False,
    max_word_seconds: float = 1.5, word_cfg_scale: float | None = None,
    reader: list[str] | None = None,
) -> None:
    """Generate text, images and audio from prompts that mix them, with one model.

    Prompt segments keep their command-line order: `--image photo.png --text "Describe
    this."` puts the image first. Answers are written to OUTPUT as <stem>_<i>.txt/.png/.wav
    per segment, plus result.json (files, seed, settings); text is also printed.

    Args:
        ckpt: checkpoint folder (default: the built-in model).
        prompt: a text segment (--text), image file (--image) or audio file (--audio).
        prompts: JSONL file, one prompt document per line (the training manifest's format).
        to: what to answer with; `auto` lets the model choose (text, images and audio mixed).
        output: folder for the answers.
        stream: print text as it is generated and write WAVs while audio is generated.
        batch_size: prompts decoded together.
        max_new_tokens: cap on generated ids per answer (default: text 256; image: one image;
            audio: --max-audio-seconds; auto: the rest of the context).
        max_audio_seconds: longest audio segment.
        min_audio_seconds: shortest audio segment (<eoa> is held back until then).
        sampling: per-modality settings: --text.temperature, --image.top-k, --audio.top-p,
            --text.repetition-penalty, ...
        greedy: always take the most likely id (temperature 0 everywhere).
        cfg_scale: classifier-free guidance for image and audio (1 = off; e.g. 3).
        cfg_interval: two fractions [start end) of each media segment where guidance applies.
        negative_prompt: text that guidance steers away from (default: the unconditional
            <uncond> prompt).
        seed: random seed; prompt i uses seed + i.
        attn: attention backend (default: triton on CUDA, sdpa on CPU).
        dtype: weight dtype; auto = bfloat16 where the device supports it.
        device: cpu or cuda.
        compile: compile the decode step with torch.compile (pays off for long or many
            generations: the first step of each batch shape takes tens of seconds).
        quiet: no progress bar and no text on stdout.
        rerank: draw this many candidates per prompt and keep the best. An image or audio
            answer: the one that the reader of its kind (--reader) finds likeliest to show or
            say the prompt's text (its text without a leading "draw:"-style instruction);
            without a reader of its kind, the one that the model, reading it back
            (--read-instruction + the candidate), finds likeliest to say that text. A text
            answer to a prompt with media: the one with the highest log p(candidate |
            prompt) + for each of the prompt's media, the reader's log p(candidate | media),
            or without a reader of its kind, log p(media | "draw:"/"say:" + candidate)
            weighted by --image-weight / --speech-weight (the first candidate is the plain
            answer; the others are sampled, at temperature 1 where text is greedy).
        via_text: a prompt of media (speech -> image, image -> speech): the model first writes
            what the media say (--read-instruction + the media), then answers the prompt's
            instruction with that text in place of the media.
        read_instruction: the text put before media for the model to write what they say
            (the built-in default was trained with "write:").
        image_weight: --rerank of text answers: how much log p(the prompt's image | "draw:" +
            the candidate) counts beside log p(the candidate | the prompt).
        speech_weight: the same for the prompt's speech ("say:" + the candidate); 0 by
            default, since the built-in model does not yet speak the captions it is given.
        word_by_word: speech from text one word at a time: after the text's instruction
            ("say:"), each word as its own text segment, then the speech the model makes of
            it, as the word-by-word documents of training have it (`omnitok data demo`); one
            WAV of all the words. The prompt must end with the text to speak.
        max_word_seconds: --word-by-word: the longest speech of one word.
        word_cfg_scale: --word-by-word: guidance of each word's speech (default: --cfg-scale);
            its unconditional row is the same document without that word's text.
        reader: the readers --rerank scores with (`omnitok reader train`), one or more of:
            "auto" (the checkpoint's reader/ and speech_reader/, where it has them; the
            default), "none" (alone: the model reads everything back), or a reader folder
            (it replaces the checkpoint's reader of its kind).
    """
    if prompt and prompts is not None:
        raise OmnitokError("give prompt segments or --prompts FILE, not both")
    interval = _interval(cfg_interval)
    backend = resolve_backend(attn, device)
    ckpt = ckpt if ckpt is not None else default_checkpoint()
    torch_dtype = pick_dtype(dtype, device)
    checkpoint = load_checkpoint(ckpt, device=device, dtype=torch_dtype, attn_backend=backend)
    gen = Generator(checkpoint, compile=compile, reader=reader or ["auto"])
    tok = checkpoint.tokenizers
    docs = (documents_from_file(prompts, tok) if prompts is not None
            else [document_from_parts(prompt or [], tok)])
    settings = GenerationSettings(
        target=to, max_new_tokens=max_new_tokens, max_audio_seconds=max_audio_seconds,
        min_audio_seconds=min_audio_seconds, sampling=sampling or ModalitySampling(),
        greedy=greedy, cfg_scale=cfg_scale, cfg_interval=interval,
        negative_prompt=text_document(negative_prompt), seed=seed, batch_size=batch_size,
        rerank=rerank, via_text=via_text, read_instruction=read_instruction,
        image_weight=image_weight, speech_weight=speech_weight, word_by_word=word_by_word,
        max_word_seconds=max_word_seconds, word_cfg_scale=word_cfg_scale)
    check_reading(settings)
    if stream and several_passes(settings):
        raise OmnitokError("--stream follows one answer as it is drawn; --rerank, --via-text "
                           "and --word-by-word pick or build the answer after several passes")
    check_words(docs, settings)  # what cannot run fails before any work
    gen.requests(docs, settings, gen.grammar(settings))
    stems = ["answer"] if len(docs) == 1 else [f"{i:04d}" for i in range(len(docs))]
    if not quiet:
        print(f"{describe_backend(backend, device)}, {str(torch_dtype).removeprefix('torch.')}",
              file=sys.stderr)
    t0 = time.perf_counter()
    answers, streamed = _run(gen, docs, settings, output, stems, stream and not quiet, quiet)
    elapsed = time.perf_counter() - t0
    files = [write_answer(tok, a.document, output, stem, streamed)
             for a, stem in zip(answers, stems)]
    _write_result(output, ckpt, settings, answers, files, elapsed, backend, torch_dtype,
                  gen.reader_sources())
    if not quiet:
        _report(answers, files, elapsed, stream)


def _interval(values: list[float] | None) -> tuple[float, float]:
    if values is None:
        return (0.0, 1.0)
    if len(values) != 2 or not 0 <= values[0] < values[1] <= 1:
        raise OmnitokError(f"--cfg-interval takes two fractions 0 <= start < end <= 1, "
                           f"got {values}")
    return (values[0], values[1])


def _run(gen: Generator, docs, settings: GenerationSettings, output: Path, stems: list[str],
         stream: bool, quiet: bool) -> tuple[list[Answer], frozenset[Path]]:
    """Decode every prompt; with `stream`, follow the single answer as it grows."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    if several_passes(settings):
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), disable=quiet,
                      transient=True) as bar:
            bar.add_task(f"generating {len(docs)} answer(s)"
                         + (f", best of {settings.rerank}" if settings.rerank > 1 else "")
                         + (", word by word" if settings.word_by_word else ""))
            return gen.generate(docs, settings), frozenset()
    requests: list = []
    sinks = ({0: AnswerStream(gen.tokenizers, output, stems[0])}
             if stream and len(docs) == 1 else {})

    def opened(batch: list) -> None:  # the opening ids (<boa> for --to audio) came with it
        for i, request in enumerate(batch, len(requests)):
            for token in request.state.history if i in sinks else ():
                sinks[i].push(token)
        requests.extend(batch)

    columns = [TextColumn("{task.description}"), TextColumn("{task.completed} ids"),
               TimeElapsedColumn()]
    try:
        with Progress(*columns, disable=quiet or bool(sinks), transient=True) as bar:
            task = bar.add_task(f"generating {len(docs)} answer(s)")
            for index, token in gen.stream(docs, settings, opened):
                bar.advance(task)
                if index in sinks:
                    sinks[index].push(token)
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    for sink in sinks.values():
        sink.finish()
    written = frozenset(p for s in sinks.values() for p in s.written)
    return [gen.answer(r) for r in requests], written


def _write_result(output: Path, ckpt: Path, settings: GenerationSettings,
                  answers: list[Answer], files: list[list[dict]], elapsed: float,
                  backend: str, dtype: torch.dtype, readers: dict[str, str | None] | None = None
                  ) -> None:
    from dataclasses import asdict

    config = asdict(settings)
    config["negative_prompt"] = (None if settings.negative_prompt is None
                                 else settings.negative_prompt[0].text)
    result = {"checkpoint": str(ckpt), "readers": readers or {}, "settings": config,
              "attention": backend,
              "dtype": str(dtype).removeprefix("torch."), "seconds": round(elapsed, 3),
              "answers": [{"seed": a.seed, "prompt_ids": len(a.prompt_ids),
                           "ids": len(a.ids), "files": f, **_reading(a)}
                          for a, f in zip(answers, files)]}
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "result.json", json.dumps(result, indent=2) + "\n")


def _reading(answer: Answer) -> dict:
    """--via-text's intermediate text and --rerank's reading-back score, where there are."""
    out = {} if answer.via is None else {"via": answer.via}
    return out if answer.score is None else {**out, "read_back": round(answer.score, 4)}


def _report(answers: list[Answer], files: list[list[dict]], elapsed: float,
            streamed: bool) -> None:
    n = sum(len(a.ids) for a in answers)
    for entries in files:
        for entry in entries:
            if entry["kind"] == "text" and not streamed:
                print(entry["text"])
    written = [e["path"] for entries in files for e in entries]
    print(f"{len(answers)} answer(s), {n} ids in {elapsed:.2f} s "
          f"({n / max(elapsed, 1e-9):.1f} ids/s); wrote {', '.join(written) or 'nothing'}",
          file=sys.stderr)
