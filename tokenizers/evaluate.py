"""`omnitok tokenizer eval`: reconstruction quality and speed of a tokenizer folder.

Images: PSNR, codebook usage and perplexity, images encoded+decoded per second.
Audio: multi-resolution log-mel distance, SI-SNR, per-level usage, real-time factors.
On demo-world manifests (documents carry ground-truth `attrs`), the independent judges of
`omnitok.demo.judges` score the originals and the round trips side by side: what matters to the
language model downstream is that the judge still recognises what comes back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from omnitok import OmnitokError, atomic_write_text
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.train.manifest import ManifestStats, iter_manifest

Item = tuple[Path, object]  # (media path, ground-truth Attrs or None)


def collect(data: list[Path], kind: str, limit: int) -> tuple[list[Item], ManifestStats]:
    """Distinct `kind` media of the manifests with their ground truth, at most `limit`."""
    stats, items, seen = ManifestStats(), [], set()
    for manifest in data:
        for doc in iter_manifest(manifest, stats):
            attrs = _attrs(doc.meta)
            for path in doc.media(kind):
                if path not in seen and len(items) < limit:
                    seen.add(path)
                    items.append((path, attrs))
    return items, stats


def _attrs(meta: dict):
    if not isinstance(meta.get("attrs"), dict):
        return None
    from omnitok.demo.world import Attrs, WorldError

    try:
        return Attrs(**meta["attrs"])
    except (TypeError, WorldError):
        return None


@torch.inference_mode()
def eval_images(tok, items: list[Item], judge: bool, batch_size: int = 64) -> dict:
    from omnitok.tokenizers.image import code_stats
    from omnitok.tokenizers.image_io import load_image

    x = torch.stack([load_image(p, tok.config.image_size) for p, _ in items])  # (N, 3, H, W)
    codes, recon, seconds = [], [], 0.0
    for i in range(0, len(x), batch_size):
        t0 = time.perf_counter()
        c = tok.encode(x[i:i + batch_size])
        recon.append(tok.decode(c).clamp(0, 1))
        seconds += time.perf_counter() - t0
        codes.append(c)
    y = torch.cat(recon)
    mse = (y.double() - x.double()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    out = {"n": len(items), "psnr_db": float((-10 * mse.log10()).mean()),
           **code_stats(torch.cat(codes), tok.config.codebook_size),
           "images_per_s": len(items) / seconds}
    if judge and all(a is not None for _, a in items):
        from omnitok.demo.judges import ImageJudge

        j = ImageJudge()
        pictures = (y * 255).round().byte().permute(0, 2, 3, 1).numpy()
        out["judge_original"] = j.score([(p, a) for p, a in items])
        out["judge_roundtrip"] = j.score([(pic, a) for pic, (_, a) in zip(pictures, items)])
    return out


@torch.inference_mode()
def eval_audio(tok, items: list[Item], judge: bool) -> dict:
    from omnitok.tokenizers.audio_io import load_audio
    from omnitok.tokenizers.audio_metrics import evaluate_codec

    clips = [load_audio(p, tok.sample_rate, tok.channels) for p, _ in items]
    out, recon = evaluate_codec(tok, clips)
    if judge and all(a is not None for _, a in items):
        from omnitok.demo.judges import SpeechJudge
        from omnitok.demo.speech import resample

        j = SpeechJudge()

        def mono16k(wav: torch.Tensor):
            return resample(wav.mean(0).numpy(), tok.sample_rate, 16000)

        out["judge_original"] = j.score([(p, a) for p, a in items])
        out["judge_roundtrip"] = j.score([(mono16k(w), a) for w, (_, a) in zip(recon, items)])
    return out


def evaluate(tok: Path, *, data: list[Path], limit: int = 400, judge: bool = True,
             out: Path | None = None) -> None:
    """Measure a tokenizer folder on held-out data: quality, code usage, speed (+ judges).

    Args:
        tok: tokenizer folder (image/, audio/ inside).
        data: JSONL manifests of held-out documents (e.g. data/demo/heldout.jsonl).
        limit: evaluate at most this many distinct images and this many audio clips.
        judge: on demo-world data, score originals and round trips with the independent judges.
        out: also write the figures as JSON to this file.
    """
    bundle = TokenizerBundle.load(tok)
    results: dict[str, dict] = {}
    for kind, fn in (("image", eval_images), ("audio", eval_audio)):
        tokenizer = getattr(bundle, kind)
        if tokenizer is None:
            continue
        items, stats = collect(data, kind, limit)
        if items:
            results[kind] = fn(tokenizer, items, judge) | {"skipped_lines": stats.n_skipped}
    if not results:
        raise OmnitokError(f"nothing to evaluate: no image or audio files in {data} that "
                           f"{tok} has a tokenizer for")
    print(format_results(results))
    if out is not None:
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")


def format_results(results: dict[str, dict]) -> str:
    lines = []
    if "image" in results:
        r = results["image"]
        lines.append(f"image  {r['n']} images  PSNR {r['psnr_db']:.2f} dB  codes used "
                     f"{r['used']} ({100 * r['usage']:.1f}%), perplexity {r['perplexity']:.0f}  "
                     f"{r['images_per_s']:.0f} images/s encode+decode")
    if "audio" in results:
        r = results["audio"]
        usage = " ".join(f"L{k} {100 * u:.0f}%" for k, u in enumerate(r["usage"]))
        lines.append(f"audio  {r['clips']} clips ({r['audio_seconds']:.0f} s)  mel distance "
                     f"{r['mel_distance']:.3f}  SI-SNR {r['si_snr_db']:.1f} dB  usage {usage}  "
                     f"real-time x{r['encode_rtf']:.0f} encode, x{r['decode_rtf']:.0f} decode")
    for kind, r in results.items():
        if "judge_original" in r:
            o, t = r["judge_original"], r["judge_roundtrip"]
            lines.append(f"{kind:<5}  judge: originals {100 * _all(o):.1f}%, round trips "
                         f"{100 * _all(t):.1f}%  ({_parts(t)})")
    return "\n".join(lines)


def _all(score: dict) -> float:
    return score.get("all", score.get("accuracy", 0.0))


def _parts(score: dict) -> str:
    return ", ".join(f"{k} {100 * score[k]:.1f}%" for k in ("shape", "colour", "background")
                     if k in score)
