"""`omnitok data demo` (build the shapes-and-speech world) and a ground-truth judge check."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from omnitok import OmnitokError, atomic_write_text


def build_demo_data(*, out: Path = Path("data/demo"), n_train: int = 4000, n_heldout: int = 400,
                    seed: int = 0, size: int = 64, sample_rate: int = 16000,
                    workers: int = 1) -> None:
    """Build the shapes-and-speech world: images, captions, speech, manifests.

    Each sample is one image and one spoken caption, used by a document in every direction
    (text->image, image->text, text->audio, audio->text, audio->image, image->audio, and one
    with all three). Rerunning with the same arguments keeps finished files.

    Args:
        out: output folder (train.jsonl, heldout.jsonl, images/, audio/, world.json).
        n_train: training samples (7 documents each).
        n_heldout: held-out samples, half of attribute combinations never seen in training.
        seed: everything is a function of the seed: same seed, same bytes.
        size: image side in pixels.
        sample_rate: audio sample rate in Hz (16-bit PCM mono WAV).
        workers: processes rendering and speaking in parallel.
    """
    from omnitok.demo.world import build_world

    info = build_world(out, n_train=n_train, n_heldout=n_heldout, seed=seed, size=size,
                       sample_rate=sample_rate, workers=workers)
    docs = ", ".join(f"{name} ({n:,} documents)" for name, n in info.n_documents.items())
    print(f"demo world in {info.out}: {info.n_train:,} train + {info.n_heldout:,} held-out "
          f"samples ({info.made:,} made now) in {info.seconds:.1f} s")
    print(f"  {docs}")


def judge_demo_data(*, data: Path = Path("data/demo/heldout.jsonl"), limit: int = 0,
                    out: Path | None = None) -> None:
    """Score the independent judges on a manifest's own (ground-truth) images and speech.

    A judge must score >= 98% here before its scores on generated media mean anything.

    Args:
        data: a demo-world manifest (train.jsonl or heldout.jsonl).
        limit: judge at most this many samples per split (0: all).
        out: also write the scores as JSON to this file.
    """
    from omnitok.demo.judges import ImageJudge, SpeechJudge

    media = manifest_media(data, limit)
    judges = {"image": ImageJudge(), "audio": SpeechJudge()}
    scores: dict[str, dict] = {}
    for (kind, split), items in sorted(media.items()):
        scores[f"{kind}/{split}"] = judges[kind].score(items)
    print(format_scores(scores))
    if out is not None:
        atomic_write_text(out, json.dumps(scores, indent=1) + "\n")


def manifest_media(data: Path, limit: int = 0) -> dict[tuple[str, str], list]:
    """{("image" | "audio", split): [(path, Attrs), ...]} of the distinct media in a manifest."""
    from omnitok.demo.world import Attrs, WorldError

    data = Path(data)
    try:
        lines = data.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise OmnitokError(f"{data}: no such file") from None
    root, seen = data.parent.resolve(), set()
    media: dict[tuple[str, str], list] = defaultdict(list)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            attrs = Attrs(**doc["attrs"])
            split = str(doc.get("split", "all"))
            segments = [s for s in doc["segments"] if "image" in s or "audio" in s]
        except (json.JSONDecodeError, KeyError, TypeError, WorldError) as e:
            raise OmnitokError(f"{data}:{n}: not a demo-world document ({e})") from None
        for seg in segments:
            kind = "image" if "image" in seg else "audio"
            path = (root / seg[kind]).resolve()
            if not path.is_relative_to(root):
                raise OmnitokError(f"{data}:{n}: {seg[kind]} escapes the manifest's folder")
            items = media[(kind, split)]
            if path not in seen and (limit <= 0 or len(items) < limit):
                seen.add(path)
                items.append((path, attrs))
    if not media:
        raise OmnitokError(f"{data}: no images or audio to judge")
    return dict(media)


def format_scores(scores: dict[str, dict]) -> str:
    """A plain table: one row per judge/split, accuracies in percent."""
    head = f"{'judge/split':<24} {'n':>5} {'shape':>7} {'colour':>7} {'backgr.':>7} " \
           f"{'all':>7} {'ms/item':>8}"
    rows = [head]
    for name, s in scores.items():
        rows.append(f"{name:<24} {s['n']:>5} " + " ".join(
            f"{100 * s[k]:>7.1f}" for k in ("shape", "colour", "background", "all"))
            + f" {1000 * s['seconds_per_item']:>8.1f}")
    return "\n".join(rows)
