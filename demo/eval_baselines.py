"""Judge baselines of `omnitok eval`: the judges on ground truth and on tokenizer round trips.

Before the model's answers are scored, each judge reads the held-out lines' own target media
(it must score >= 98%, or it is not a judge) and the same media after an encode + decode with
the checkpoint's tokenizers (what the model could reproduce at best). Text targets are
compared exactly; their round trip is the text tokenizer's.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from omnitok.demo.eval_data import SPLITS, EvalItem
from omnitok.demo.eval_metrics import (
    TRUTH_MIN,
    judge_image,
    judge_speech,
    judge_text,
    summarise,
)
from omnitok.demo.judges import ImageJudge, SpeechJudge
from omnitok.tokenizers.bundle import TokenizerBundle

NAMES = {"text": "exact match", "image": "image judge", "audio": "speech judge"}


def distinct_targets(items: list[EvalItem], kind: str) -> list[EvalItem]:
    """One line per distinct (split, target) among the lines whose target is `kind`."""
    seen, out = set(), []
    for item in items:
        key = (item.split, str(item.target[1]))
        if item.kind == kind and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def read_image(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_speech(path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of a sound file."""
    import soundfile as sf

    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    return wav.mean(1), rate


@torch.inference_mode()
def image_roundtrips(tokenizers: TokenizerBundle, items: list[EvalItem],
                     batch_size: int = 64) -> list[np.ndarray]:
    """The target images after encode + decode with the image tokenizer, as pixels."""
    from omnitok.tokenizers.image import load_image

    tok, out = tokenizers.image, []
    for i in range(0, len(items), batch_size):
        x = torch.stack([load_image(it.target[1], tok.config.image_size)
                         for it in items[i:i + batch_size]])  # (B, 3, S, S)
        out += [to_pixels(y) for y in tok.decode(tok.encode(x))]
    return out


@torch.inference_mode()
def speech_roundtrip(tokenizers: TokenizerBundle, item: EvalItem) -> np.ndarray:
    """The target speech after encode + decode with the audio codec, mono at its rate."""
    from omnitok.generate.outputs import decode_audio
    from omnitok.tokenizers.audio import load_audio

    tok = tokenizers.audio
    codes = tok.encode_long(load_audio(item.target[1], tok.sample_rate, tok.channels))
    return decode_audio(tokenizers, codes).float().mean(0).numpy()


def kind_baseline(kind: str, items: list[EvalItem], tokenizers: TokenizerBundle,
                  judges: dict) -> list[tuple[str, str, list]]:
    """(split, "truth" | "roundtrip", outcomes) for the distinct `kind` targets."""
    chosen = distinct_targets(items, kind)
    if kind == "text":
        text = tokenizers.text
        truth = [judge_text(it.caption, it) for it in chosen]
        trip = [judge_text(text.decode(text.encode(it.caption)), it) for it in chosen]
    elif kind == "image":
        truth = [judge_image(read_image(it.target[1]), it, judges["image"]) for it in chosen]
        trip = [judge_image(p, it, judges["image"])
                for p, it in zip(image_roundtrips(tokenizers, chosen), chosen)]
    else:
        truth = [judge_speech(*read_speech(it.target[1]), it, judges["audio"]) for it in chosen]
        rate = tokenizers.audio.sample_rate
        trip = [judge_speech(speech_roundtrip(tokenizers, it), rate, it, judges["audio"])
                for it in chosen]
    return [(split, name, [o for o, it in zip(outs, chosen) if it.split == split])
            for split in SPLITS for name, outs in (("truth", truth), ("roundtrip", trip))]


def baselines(items: list[EvalItem], kinds: list[str], tokenizers: TokenizerBundle,
              judges: dict) -> dict[str, dict]:
    """{kind: {split: {"truth": summary, "roundtrip": summary}, "seconds": s}}."""
    out: dict[str, dict] = {}
    for kind in kinds:
        start = time.perf_counter()
        result: dict = {}
        for split, name, outcomes in kind_baseline(kind, items, tokenizers, judges):
            if outcomes:
                result.setdefault(split, {})[name] = summarise(outcomes, kind)
        result["seconds"] = round(time.perf_counter() - start, 3)
        out[kind] = result
    return out


def judge_warnings(base: dict[str, dict]) -> list[str]:
    """One loud line per judge that scores below TRUTH_MIN on ground truth."""
    lines = []
    for kind, result in base.items():
        for split in SPLITS:
            truth = result.get(split, {}).get("truth")
            if truth is not None and truth["all"] < TRUTH_MIN:
                lines.append(f"WARNING: the {NAMES[kind]} scores {100 * truth['all']:.1f}% on "
                             f"ground-truth {split} {kind} (< {100 * TRUTH_MIN:.0f}%): it is not "
                             f"a judge, and its scores of the model mean nothing")
    return lines


def make_judges(kinds: list[str]) -> dict:
    """The judges the target kinds need (the speech judge builds its templates once)."""
    judges: dict = {}
    if "image" in kinds:
        judges["image"] = ImageJudge()
    if "audio" in kinds:
        judges["audio"] = SpeechJudge()
    return judges
