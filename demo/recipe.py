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
    eval        omnitok eval               -> OUT/eval/ (eval.json, contact sheet)

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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omnitok import OmnitokError, atomic_write_text

STAGES = ("data", "text", "image", "audio", "tokenize", "train", "eval")
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
    eval_limit: int = 50

    @classmethod
    def quick(cls) -> RecipeSettings:
        return cls(n_train=24, n_heldout=8, text_vocab=300, image_steps=4, audio_steps=4,
                   preset="debug", other_fraction=0.5, train_steps=6, batch_size=2, seq_len=1024,
                   warmup_steps=2, eval_limit=1)


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
            tokenize train eval.
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
    print(f"recipe done in {total / 60:.1f} min: checkpoint {out / 'run' / 'last'}, "
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

    def train() -> None:
        from omnitok import native_bf16
        from omnitok.train.commands import train_command

        run = out / "run"
        train_command(data=out / "shards_image", mix=[f"{out / 'shards'}:1"], out=run,
                      model=s.preset, tokenizer=tok, codebook_init=True,
                      image_neighbours=True, image_summary=s.image_summary,
                      precision="bf16" if native_bf16() else "32",
                      resume=(run / "last").exists(), max_steps=s.train_steps,
                      batch_size=s.batch_size, seq_len=s.seq_len, lr=s.lr,
                      min_lr=s.lr / 10, warmup_steps=s.warmup_steps,
                      condition_dropout=s.condition_dropout, seed=seed, threads=threads,
                      checkpoint_every=max(1, min(500, s.train_steps)),
                      val_data=out / "val_shards", val_every=max(1, min(250, s.train_steps)))

    def evaluate() -> None:
        from omnitok.demo.evaluate import eval_command

        eval_command(out / "run" / "last", data=data / "heldout.jsonl", limit=s.eval_limit,
                     out=out / "eval", seed=seed)

    return {"data": data_stage, "text": text, "image": image, "audio": audio,
            "tokenize": tokenize, "train": train, "eval": evaluate}


def split_manifest(manifest: Path, image_out: Path, other_out: Path, fraction: float,
                   seed: int) -> tuple[int, int]:
    """Write the image->text and text->image lines of `manifest` to `image_out`, and a seeded
    `fraction` of its other lines (in their order) to `other_out`; both beside `manifest`,
    whose media paths are relative to it. Returns the two line counts."""
    import numpy as np

    image, other = [], []
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise OmnitokError(f"{manifest}:{number}: not JSON") from None
            direction = doc.get("direction") if isinstance(doc, dict) else None
            (image if direction in IMAGE_DIRECTIONS else other).append(line)
    keep = np.random.default_rng(seed).permutation(len(other))[:round(fraction * len(other))]
    other = [other[i] for i in np.sort(keep)]
    atomic_write_text(image_out, "".join(image))
    atomic_write_text(other_out, "".join(other))
    return len(image), len(other)


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
