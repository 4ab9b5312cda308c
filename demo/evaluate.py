"""`omnitok eval`: a checkpoint on held-out prompts in every direction, scored by judges that
do not use omnitok's models.

For each held-out line of the shapes-and-speech world the prompt is every segment but the
last, and the answer is generated with `--to <the last segment's kind>` (lines batched by
direction). The independent judges score the answers against the line's ground truth
(`eval_metrics`), separately for attribute combinations seen in training and never seen;
before that, the judges read the lines' own media and their tokenizer round trips
(`eval_baselines`). Written to OUT: `eval.json` (every score, count, setting and timing),
`contact_sheet.png` (generated images under their prompts) and `samples/` (every generated
image and WAV); the table goes to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from omnitok import OmnitokError, atomic_write_text
from omnitok.demo.contact_sheet import contact_sheet
from omnitok.demo.eval_baselines import baselines, judge_warnings, make_judges
from omnitok.demo.eval_data import EvalItem, by_direction, choose_directions, read_heldout
from omnitok.demo.eval_metrics import aggregate
from omnitok.demo.eval_run import (
    DirectionRun,
    EvalSettings,
    Prepared,
    eval_sampling,
    prepare,
    run_direction,
)
from omnitok.demo.eval_table import format_table
from omnitok.generate.sampling import ModalitySampling

EVAL_SAMPLING = eval_sampling()
DType = Literal["auto", "float32", "bfloat16"]


def eval_command(
    ckpt: Path | None = None, *, data: Path = Path("data/demo/heldout.jsonl"), limit: int = 0,
    out: Path = Path("eval"), directions: list[str] | None = None, batch_size: int = 16,
    greedy: bool = False, sampling: ModalitySampling = EVAL_SAMPLING, cfg_scale: float = 1.0,
    max_text_tokens: int = 32, max_audio_seconds: float = 6.0, seed: int = 0,
    sheet: int = 64, dtype: DType = "auto", device: str = "cpu", quiet: bool = False,
    shuffle_image_codes: bool = False, rerank: int = 1, via_text: bool = False,
    image_weight: float = 1.0, speech_weight: float = 0.0, word_by_word: bool = False,
    max_word_seconds: float = 1.5, word_cfg_scale: float | None = None,
    reader: list[str] | None = None,
) -> None:
    """Score a checkpoint on held-out prompts in every direction with independent judges.

    Prints a table (accuracy per direction, for held-out combinations seen in training and
    never seen, beside each judge's score on the ground truth and on tokenizer round trips)
    and writes eval.json, contact_sheet.png and samples/ to OUT.

    Args:
        ckpt: checkpoint folder (default: the built-in model).
        data: held-out manifest of the shapes-and-speech world (`omnitok data demo`).
        limit: at most this many lines per direction and split (0: all).
        out: folder for eval.json, contact_sheet.png and samples/.
        directions: only these directions (e.g. text->image image->text; the lines with all
            three modalities are audio+image->text, audio+text->image, image+text->audio).
        batch_size: prompts generated together.
        greedy: always take the most likely id.
        sampling: per-modality settings: --text.temperature, --image.top-k, ... (text is
            greedy by default: an answer is scored as one exact caption)
        cfg_scale: classifier-free guidance for image and audio answers (1 = off).
        max_text_tokens: longest text answer, in text ids.
        max_audio_seconds: longest speech answer.
        seed: random seed; line i of a direction uses seed + i.
        sheet: at most this many images on the contact sheet (0: no sheet).
        dtype: weight dtype; auto = bfloat16 where the device supports it.
        device: cpu or cuda.
        quiet: no progress bar.
        shuffle_image_codes: put the codes of every prompt image in a random order (seeded per
            line) before generating: how much the answers depend on where each code is, beyond
            which codes the image holds (a layout probe; the judges' baselines are unchanged).
        rerank: draw this many candidates per line and keep the best, as `omnitok generate
            --rerank` picks (the judges never choose): media answers by the reader of their
            kind (--reader) or the model reading them back; text answers by log p(candidate
            | prompt) plus the readers' log p(candidate | each prompt media) (the first
            candidate is the plain greedy answer, the others sampled at temperature 1).
        via_text: audio->image and image->audio: the model first writes what the prompt's
            media say, then draws or speaks from that text (two steps, one model).
        image_weight: --rerank of text answers: how much log p(the prompt's image | "draw:" +
            the candidate) counts beside log p(the candidate | the prompt).
        speech_weight: the same for the prompt's speech ("say:" + the candidate); 0 by
            default, since the built-in model does not yet speak the captions it is given.
        word_by_word: speech answers to a prompt that ends with text (text->audio,
            image+text->audio, and image->audio with --via-text) spoken one word at a time,
            as the world's word-by-word documents have it (`omnitok generate --word-by-word`).
        max_word_seconds: --word-by-word: the longest speech of one word.
        word_cfg_scale: --word-by-word: guidance of each word's speech (default: --cfg-scale);
            its unconditional row is the same document without that word's text.
        reader: the readers --rerank scores with: "auto" (the checkpoint's reader/ and
            speech_reader/, where it has them; the default), "none" (alone), or reader
            folders (`omnitok reader train`), as for `omnitok generate`.
    """
    start = time.perf_counter()
    settings = EvalSettings(batch_size, greedy, sampling, cfg_scale,
                            max_text_tokens, max_audio_seconds, seed, shuffle_image_codes,
                            rerank, via_text, image_weight, speech_weight, word_by_word,
                            max_word_seconds, word_cfg_scale, reader or ["auto"])
    _check(settings)
    groups = choose_directions(by_direction(read_heldout(data, limit)), directions)
    checkpoint = _load(ckpt, dtype, device)
    groups, skipped = runnable(groups, checkpoint.tokenizers)
    for note in skipped:
        print(f"note: skipping {note['direction']}: {note['reason']}", file=sys.stderr)
    if not groups:
        raise OmnitokError(f"nothing to evaluate: the checkpoint cannot answer any direction "
                           f"of {data}")
    report = evaluate(checkpoint, groups, settings, out, sheet, quiet)
    dtype_name = str(next(checkpoint.model.parameters()).dtype).removeprefix("torch.")
    report.update(checkpoint=str(checkpoint.path), data=str(data), limit=limit,
                  skipped=skipped, dtype=dtype_name, device=device)
    report["seconds"]["total"] = round(time.perf_counter() - start, 3)
    atomic_write_text(Path(out) / "eval.json", json.dumps(report, indent=1) + "\n")
    print_report(report, Path(out))


def print_report(report: dict, out: Path) -> None:
    """The table and any judge warnings on stdout; where the files went on stderr."""
    n = sum(c["lines"] for c in report["counts"].values())
    shuffled = report["settings"].get("shuffle_image_codes")
    shuffled = ", prompt image codes shuffled" if shuffled else ""
    if report["settings"].get("rerank", 1) > 1:
        shuffled += f", answers best of {report['settings']['rerank']} read back"
        readers = report.get("readers") or {}
        if readers:
            shuffled += " (by the readers " + ", ".join(
                f"{kind} {path}" for kind, path in readers.items()) + ")"
    if report["settings"].get("via_text"):
        shuffled += ", media->media via text"
    if report["settings"].get("word_by_word"):
        shuffled += ", speech word by word"
    print(f"{report['checkpoint']} on {report['data']}: {n} held-out lines, {report['dtype']}"
          f"{shuffled}")
    print(format_table(report["scores"], report["baselines"]))
    for line in report["warnings"]:
        print(line)  # beside the table, wherever it goes
    files = [str(out / "eval.json")]
    files += [report["contact_sheet"]] if report["contact_sheet"] else []
    files += [str(out / "samples")] if any(it["file"] for it in report["items"]) else []
    print(f"wrote {', '.join(files)} in {report['seconds']['total']:.1f} s", file=sys.stderr)


def _check(settings: EvalSettings) -> None:
    if settings.batch_size < 1 or settings.max_text_tokens < 1:
        raise OmnitokError(f"--batch-size and --max-text-tokens must be >= 1, got "
                           f"{settings.batch_size} and {settings.max_text_tokens}")
    if settings.rerank < 1:
        raise OmnitokError(f"--rerank must be >= 1, got {settings.rerank}")
    if settings.max_audio_seconds <= 0:
        raise OmnitokError(f"--max-audio-seconds must be > 0, got {settings.max_audio_seconds}")
    if settings.max_word_seconds <= 0:
        raise OmnitokError(f"--max-word-seconds must be > 0, got {settings.max_word_seconds}")


def _load(ckpt: Path | None, dtype: str, device: str):
    from omnitok.generate.commands import default_checkpoint, pick_dtype
    from omnitok.kernels import resolve_backend
    from omnitok.model.checkpoint import load_checkpoint

    folder = ckpt if ckpt is not None else default_checkpoint()
    return load_checkpoint(folder, device=device, dtype=pick_dtype(dtype, device),
                           attn_backend=resolve_backend(None, device))


def runnable(groups: dict[str, list[EvalItem]], tokenizers
             ) -> tuple[dict[str, list[EvalItem]], list[dict]]:
    """The directions whose every modality has a tokenizer in the checkpoint; notes on the
    others."""
    keep, skipped = {}, []
    for direction, items in groups.items():
        kinds = {k for it in items for k, _ in it.prompt} | {items[0].kind}
        missing = sorted(k for k in kinds if getattr(tokenizers, k) is None)
        if missing:
            skipped.append({"direction": direction, "lines": len(items),
                            "reason": f"the checkpoint has no {' or '.join(missing)} tokenizer"})
        else:
            keep[direction] = items
    return keep, skipped


def evaluate(checkpoint, groups: dict[str, list[EvalItem]], settings: EvalSettings, out: Path,
             sheet: int = 64, quiet: bool = True) -> dict:
    """Baselines, generation and scores for `groups`; writes samples/ and the contact sheet
    under `out`; returns the report (eval.json without the run's own details)."""
    from omnitok.generate.generator import Generator

    gen = Generator(checkpoint, reader=settings.reader)
    t = time.perf_counter()
    prepared = {d: prepare(gen, d, its, settings) for d, its in groups.items()}  # fail early
    seconds = {"prompts": round(time.perf_counter() - t, 3)}
    items = [it for its in groups.values() for it in its]
    kinds = list(dict.fromkeys(its[0].kind for its in groups.values()))
    judges = make_judges(kinds)
    t = time.perf_counter()
    base = baselines(items, kinds, checkpoint.tokenizers, judges)
    seconds["baselines"] = round(time.perf_counter() - t, 3)
    runs = run_all(gen, prepared, Path(out), judges, quiet)
    outcomes = [o for r in runs for o in r.outcomes]
    scores = aggregate(outcomes, {d: its[0].kind for d, its in groups.items()})
    cells = [c for r in runs for c in r.cells][:max(sheet, 0)]
    path = None
    if cells:
        path = contact_sheet(cells, Path(out) / "contact_sheet.png",
                             title=f"{checkpoint.path}: generated images (green: judged right)")
    return {"settings": asdict(settings), "readers": gen.reader_sources(), "scores": scores,
            "baselines": base,
            "warnings": judge_warnings(base), "contact_sheet": str(path) if path else None,
            "counts": {r.direction: r.counts for r in runs},
            "seconds": {**seconds, **{f"generate {r.direction}": r.seconds for r in runs},
                        **{f"judge {r.direction}": r.judge_seconds for r in runs}},
            "items": [asdict(o) for o in outcomes]}


def run_all(gen, prepared: dict[str, Prepared], out: Path, judges: dict,
            quiet: bool) -> list[DirectionRun]:
    """Every direction under one progress bar (lines answered)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    total = sum(len(job.items) for job in prepared.values())
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    runs, done = [], 0
    with Progress(*columns, disable=quiet, transient=True) as bar:
        task = bar.add_task("generating", total=total)
        for direction, job in prepared.items():
            bar.update(task, description=f"generating {direction}")
            runs.append(run_direction(gen, job, out, judges,
                                      lambda n, done=done: bar.update(task, completed=done + n)))
            done += len(job.items)
    return runs
