"""`omnitok demo train`: the whole recipe of the built-in default, resumable stage by stage.

    data        omnitok data demo          -> DATA/{train,heldout}.jsonl, images/, audio/
    text        omnitok tokenizer train text  -> OUT/tok/text.model
    image       omnitok tokenizer train image -> OUT/tok/image/
    audio       omnitok tokenizer train audio -> OUT/tok/audio/
    tokenize    omnitok tokenize           -> OUT/shards_image/ (the image->text and text->image
                                              documents), OUT/shards/ (a seeded share of the
                                              others), OUT/val_shards/ (held-out)
    train       omnitok train              -> OUT/run/ (checkpoints, metrics with the
                                              held-out loss, curves)
    speech      omnitok tokenize, train    -> OUT/shards_speech/, OUT/speech_run/: the train
                                              stage's model goes on speaking word by word
    draw        omnitok train              -> OUT/draw_run/: the speech stage's model goes on
                                              drawing (image documents, some speech)
    reader      omnitok reader train       -> OUT/draw_run/last/reader/ and speech_reader/:
                                              the readers --rerank picks answers with
    eval        omnitok eval               -> OUT/eval/ (eval.json, contact sheet) of the
                                              draw stage's model, --word-by-word

Each stage is skipped when its output is complete (the data builder, the tokenizer and the
trainer resume on their own), so an interrupted recipe picks up where it stopped: rerun the
same command. OUT/recipe.json records, per stage, the seconds of its latest run and the
total over every run (an interrupted stage's time plus its resumption). `--quick` is the
plumbing check CI runs: a small world, tokenizers trained for a few steps, the `debug`
preset, minutes instead of an hour.

The image directions get most of the training: shapes are read and drawn only after one to
two passes over their documents (README, "Shapes are learned late"), while speech is read
within a fraction of a pass. So every image->text and text->image document is tokenized,
but only `other_fraction` of the other directions' documents, and the model trains on both
(`--data shards_image --mix shards:1`). It trains in bfloat16 where the CPU has native
support (`omnitok.native_bf16`), float32 elsewhere (about half as fast).

Speech generation is learned last, from its own documents: the speech stage takes the text->audio
documents of the first `speech_samples` training samples (each caption spoken word by word:
the world's text->audio lines) and a seeded `speech_mix` share of those samples' other lines,
and trains the train stage's model `speech_steps` more steps on them at a lower learning rate.
The draw stage then trains that model `draw_steps` more on every image->text and text->image
document, with each speech-stage document half as often (`draw_speech_mix`) so that it keeps
speaking: hexagons and stars, the shapes it draws worst, need more passes over the image
documents than the train stage gives them. Its model (OUT/draw_run/last) is the recipe's
result, with two readers beside it
(model/reader.py): small image-to-caption and speech-to-caption models trained on the
world's image-caption and speech-caption pairs, which score candidate answers for
`--rerank`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from omnitok import OmnitokError, atomic_write_text

STAGES = ("data", "text", "image", "audio", "tokenize", "train", "speech", "draw", "reader",
          "eval")
RESULT = Path("draw_run") / "last"  # the recipe's model, below OUT
IMAGE_DIRECTIONS = ("image->text", "text->image")


@dataclass
class RecipeSettings:
    """Sizes of the recipe; `quick()` is the CI-sized version."""

    n_train: int = 24000  # 168,000 documents, 48,000 of them image->text or text->image
    n_heldout: int = 400
    text_vocab: int = 480
    image_size: int = 48
    image_steps: int = 600
    audio_levels: int = 2
    audio_steps: int = 1000
    preset: str = "tiny"
    other_fraction: float = 0.125  # of the documents in the other directions
    image_summary: str = "cnn"  # --image-neighbours --image-summary
    train_steps: int = 2600
    batch_size: int = 8
    seq_len: int = 1024
    lr: float = 2e-3
    warmup_steps: int = 100
    condition_dropout: float = 0.1
    speech_samples: int = 6000  # the speech stage: text->audio lines of these samples ...
    speech_mix: float = 0.17  # ... and this share of their other lines
    speech_steps: int = 600
    speech_lr: float = 8e-4
    draw_steps: int = 400  # the draw stage: about a third of a pass over the image documents
    draw_speech_mix: float = 0.5  # ... with each speech-stage document this often
    draw_lr: float = 5e-4
    reader_epochs: int = 12  # over the 24,000 image-caption pairs
    speech_reader_pairs: int = 6000  # of the audio->text lines (12,000 pick no better)
    speech_reader_epochs: int = 12
    eval_limit: int = 50

    @classmethod
    def quick(cls) -> RecipeSettings:
        return cls(n_train=24, n_heldout=8, text_vocab=300, image_steps=4, audio_steps=4,
                   preset="debug", other_fraction=0.5, train_steps=6, batch_size=2, seq_len=1024,
                   warmup_steps=2, speech_samples=24, speech_mix=0.5, speech_steps=4,
                   draw_steps=4,
                   reader_epochs=2, speech_reader_pairs=0, speech_reader_epochs=2,
                   eval_limit=1)


def demo_train(*, out: Path = Path("runs/demo"), data: Path = Path("data/demo"),
               quick: bool = False, stages: list[str] = STAGES, preset: str | None = None,
               train_steps: int | None = None, other_fraction: float | None = None,
               threads: int | None = None, seed: int = 0) -> None:
    """Run the recipe of the built-in default: data, tokenizers, shards, training, eval.

    Args:
        out: folder for the tokenizers (tok/), shards, the training run (run/) and eval/.
        data: folder of the shapes-and-speech world (built when missing).
        quick: the small plumbing check (minutes): tiny world, debug preset, few steps.
        stages: stages to run, in order (finished ones are skipped): data text image audio
            tokenize train speech draw reader eval.
        preset: model preset (default: tiny; debug with --quick).
        train_steps: optimizer steps of the model.
        other_fraction: share of the documents in directions other than image->text and
            text->image that the model trains on (0 < F <= 1; default 0.125).
        threads: CPU threads for training (default: torch's).
        seed: seed of every stage.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise OmnitokError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    s = RecipeSettings.quick() if quick else RecipeSettings()
    s.preset, s.train_steps = preset or s.preset, train_steps or s.train_steps
    if other_fraction is not None:
        if not 0 < other_fraction <= 1:
            raise OmnitokError(f"--other-fraction {other_fraction:g}: expected 0 < F <= 1")
        s.other_fraction = other_fraction
    out.mkdir(parents=True, exist_ok=True)
    runners = _stages(out, data, s, threads, seed)
    log = _read_log(out)
    for name in STAGES:
        if name not in stages:
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        runners[name]()
        seconds = time.perf_counter() - t0
        spent = log.get(name, {}).get("total_seconds", 0.0) + seconds
        log[name] = {"seconds": round(seconds, 1), "total_seconds": round(spent, 1)}
        _write_log(out, log, s)
    total = sum(v.get("total_seconds", v.get("seconds", 0.0)) for v in log.values())
    print(f"recipe done in {total / 60:.1f} min: checkpoint {out / RESULT}, "
          f"eval {out / 'eval'}")


def _stages(out: Path, data: Path, s: RecipeSettings, threads: int | None,
            seed: int) -> dict[str, Callable[[], None]]:
    tok, manifest = out / "tok", data / "train.jsonl"
    image_manifest = data / "train_image.jsonl"
    other_manifest = data / f"train_other_{s.other_fraction:g}_{seed}.jsonl"

    def text() -> None:
        from omnitok.tokenizers.commands import train_text

        if not (tok / "text.model").exists():
            train_text(data=[manifest], out=tok, vocab_size=s.text_vocab, seed=seed)

    def image() -> None:
        from omnitok.tokenizers.image_train import train_image_command

        if not (tok / "image" / "model.safetensors").exists():
            train_image_command(data=[manifest], out=tok / "image", size=s.image_size,
                                steps=s.image_steps, seed=seed, threads=threads)

    def audio() -> None:
        from omnitok.tokenizers.audio_train import train_audio_command

        if not (tok / "audio" / "model.safetensors").exists():
            train_audio_command(data=[manifest], out=tok / "audio", n_q=s.audio_levels,
                                steps=s.audio_steps, seed=seed, threads=threads)

    def data_stage() -> None:
        from omnitok.demo.commands import build_demo_data

        build_demo_data(out=data, n_train=s.n_train, n_heldout=s.n_heldout, seed=seed,
                        workers=2)

    def tokenize() -> None:
        from omnitok.tokenizers.bundle import TokenizerBundle
        from omnitok.train.commands import tokenize_command

        bundle = TokenizerBundle.load(tok)
        if not (tok / "vocab.json").exists():
            bundle.vocab.save(tok / "vocab.json")
        split_manifest(manifest, image_manifest, other_manifest, s.other_fraction, seed)
        tokenize_command(image_manifest, tokenizer=tok, out=out / "shards_image", workers=2)
        tokenize_command(other_manifest, tokenizer=tok, out=out / "shards", workers=2)
        tokenize_command(data / "heldout.jsonl", tokenizer=tok, out=out / "val_shards",
                         workers=2)

    def fit(run: Path, steps: int, every: int, val_every: int, **how) -> None:
        """`omnitok train` into `run` (resumed where it stopped) with what every model stage
        shares: the image summary, the precision, the batch, held-out loss on val_shards."""
        from omnitok import native_bf16
        from omnitok.train.commands import train_command

        train_command(out=run, resume=(run / "last").exists(), max_steps=steps,
                      image_neighbours=True, image_summary=s.image_summary,
                      precision="bf16" if native_bf16() else "32",
                      batch_size=s.batch_size, seq_len=s.seq_len,
                      condition_dropout=s.condition_dropout, threads=threads,
                      checkpoint_every=max(1, min(every, steps)), val_data=out / "val_shards",
                      val_every=max(1, min(val_every, steps)), **how)

    def train() -> None:
        fit(out / "run", s.train_steps, 500, 250, data=out / "shards_image",
            mix=[f"{out / 'shards'}:1"], model=s.preset, tokenizer=tok, codebook_init=True,
            lr=s.lr, min_lr=s.lr / 10, warmup_steps=s.warmup_steps, seed=seed)

    def speech() -> None:
        from omnitok.train.commands import tokenize_command

        speech_lines = data / f"train_speech_{s.speech_samples}_{s.speech_mix:g}_{seed}.jsonl"
        speech_manifest(manifest, speech_lines, s.speech_samples, s.speech_mix, seed)
        tokenize_command(speech_lines, tokenizer=tok, out=out / "shards_speech", workers=2)
        fit(out / "speech_run", s.speech_steps, 150, 300, data=out / "shards_speech",
            init=out / "run" / "last", lr=s.speech_lr, min_lr=s.speech_lr / 16,
            warmup_steps=min(30, s.warmup_steps), seed=seed + 11)

    def draw() -> None:
        fit(out / RESULT.parent, s.draw_steps, 200, 200, data=out / "shards_image",
            mix=[f"{out / 'shards_speech'}:{s.draw_speech_mix:g}"],
            init=out / "speech_run" / "last", lr=s.draw_lr, min_lr=s.draw_lr * 0.06,
            warmup_steps=min(30, s.warmup_steps), seed=seed + 23)

    def reader() -> None:
        from omnitok.model.reader import READER_DIRS
        from omnitok.train.reader import train_reader_command

        last = out / RESULT
        if not (last / READER_DIRS["image"] / "config.json").exists():
            train_reader_command(manifest, tokenizer=last, epochs=s.reader_epochs, seed=seed,
                                 threads=threads or 0)
        if not (last / READER_DIRS["audio"] / "config.json").exists():
            train_reader_command(manifest, tokenizer=last, kind="audio",
                                 max_pairs=s.speech_reader_pairs,
                                 epochs=s.speech_reader_epochs, seed=seed,
                                 threads=threads or 0, workers=2)

    def evaluate() -> None:
        from omnitok.demo.evaluate import eval_command
        from omnitok.generate.showcase import WORD_CFG_SCALE

        eval_command(out / RESULT, data=data / "heldout.jsonl",
                     limit=s.eval_limit, out=out / "eval", seed=seed, word_by_word=True,
                     word_cfg_scale=WORD_CFG_SCALE)

    return {"data": data_stage, "text": text, "image": image, "audio": audio,
            "tokenize": tokenize, "train": train, "speech": speech, "draw": draw,
            "reader": reader, "eval": evaluate}


def split_manifest(manifest: Path, image_out: Path, other_out: Path, fraction: float,
                   seed: int) -> tuple[int, int]:
    """Write the image->text and text->image lines of `manifest` to `image_out`, and a seeded
    `fraction` of its other lines (in their order) to `other_out`; both beside `manifest`,
    whose media paths are relative to it. Returns the two line counts."""
    import numpy as np

    image, other = [], []
    for _, line, doc in _lines(manifest):
        (image if doc.get("direction") in IMAGE_DIRECTIONS else other).append(line)
    keep = np.random.default_rng(seed).permutation(len(other))[:round(fraction * len(other))]
    other = [other[i] for i in np.sort(keep)]
    atomic_write_text(image_out, "".join(image))
    atomic_write_text(other_out, "".join(other))
    return len(image), len(other)


def speech_manifest(manifest: Path, out: Path, n_samples: int, mix: float, seed: int
                    ) -> tuple[int, int]:
    """Write the lines of `manifest`'s first `n_samples` samples to `out` (beside it): every
    text->audio line (spoken word by word) and a seeded `mix` share of the others, in their
    order. Returns (text->audio lines, other lines)."""
    import numpy as np

    speech, other, order = [], [], []
    for number, line, doc in _lines(manifest):
        try:
            index = int(str(doc["sample"]).rpartition("-")[2])
        except (ValueError, KeyError):
            raise OmnitokError(f"{manifest}:{number}: not a demo-world line (JSON with a "
                               f"'sample' such as train-000123)") from None
        if index >= n_samples:
            continue
        speech_line = doc.get("direction") == "text->audio"
        (speech if speech_line else other).append(line)
        order.append((speech_line, len(speech if speech_line else other) - 1))
    keep = set(np.random.default_rng([seed, 5]).permutation(len(other))[:round(mix * len(other))]
               .tolist())
    lines = [speech[i] if is_speech else other[i] for is_speech, i in order
             if is_speech or i in keep]
    atomic_write_text(out, "".join(lines))
    return len(speech), len(keep)


def _lines(manifest: Path) -> Iterator[tuple[int, str, dict]]:
    """(line number, line, its JSON object; {} for other JSON) of each non-blank line."""
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise OmnitokError(f"{manifest}:{number}: not JSON") from None
            yield number, line, doc if isinstance(doc, dict) else {}


def _read_log(out: Path) -> dict:
    path = out / "recipe.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError):
        return {}


def _write_log(out: Path, log: dict, settings: RecipeSettings) -> None:
    atomic_write_text(out / "recipe.json", json.dumps(
        {"settings": asdict(settings), "stages": log}, indent=2) + "\n")
