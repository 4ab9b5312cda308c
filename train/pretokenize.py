"""Pre-tokenization: a corpus manifest -> shards of unified-vocabulary ids (train/shards.py).

Manifest lines [k * lines_per_shard, (k + 1) * lines_per_shard) become shard k, so a shard
depends only on its own lines and the tokenizers: the output is byte-identical for any number
of workers, a rerun keeps every shard whose lines and tokenizers are unchanged, and an edited
line only re-encodes its own shard. Each worker encodes with one intra-op thread.

Bad manifest lines are skipped and counted by train/manifest.py; a document whose media file
cannot be decoded or whose text is empty is skipped and counted here (`strict` raises instead).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from omnitok import OmnitokError, atomic_write_text, read_json_object
from omnitok.train.encode import DocumentEncoder, SkipDocument, single_thread
from omnitok.train.manifest import ManifestDocument, ManifestStats, iter_manifest
from omnitok.train.shards import FORMAT, VERSION, ids_dtype, read_meta, shard_name, write_shard

MODALITIES = ("text", "image", "audio", "special")


class PretokenizeError(OmnitokError):
    """A shard folder made with other settings, or a bad document in strict mode."""


@dataclass
class TokenizeSummary:
    """What a run of `tokenize_corpus` found and wrote."""

    out: Path
    shards: int = 0
    written: int = 0  # shards encoded by this run (the others were finished already)
    documents: int = 0
    tokens: Counter = field(default_factory=Counter)  # modality -> ids
    skipped: Counter = field(default_factory=Counter)  # reason -> documents
    examples: dict[str, str] = field(default_factory=dict)  # reason -> "file:line: why"
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the end of a run."""
        total = sum(self.tokens.values())
        per = ", ".join(f"{m} {self.tokens[m]:,}" for m in MODALITIES if self.tokens[m])
        rate = self.written / self.seconds if self.seconds else 0.0
        why = ", ".join(f"{n:,} {r}" for r, n in self.skipped.most_common())
        skipped = f"; skipped {sum(self.skipped.values()):,} ({why})" if why else ""
        return (f"{self.out}: {self.documents:,} documents, {total:,} tokens ({per}) in "
                f"{self.shards} shards ({self.written} written, {self.shards - self.written} "
                f"kept) in {self.seconds:.1f} s ({rate:.2f} shards/s){skipped}")


def tokenize_corpus(manifest: Path, tokenizer: Path, out: Path, *, workers: int = 1,
                    lines_per_shard: int = 2048, strict: bool = False,
                    progress: bool = True) -> TokenizeSummary:
    """Encode every document of `manifest` with the tokenizers in `tokenizer` into `out`."""
    if workers < 1 or lines_per_shard < 1:
        raise PretokenizeError("workers and lines_per_shard must be >= 1")
    start, manifest, out = time.perf_counter(), Path(manifest), Path(out)
    if not manifest.is_file():
        raise PretokenizeError(f"{manifest}: cannot read manifest (no such file)")
    with single_thread():
        encoder = DocumentEncoder(tokenizer, strict=strict, name=manifest.name)
    settings = {"format": FORMAT, "version": VERSION, "lines_per_shard": lines_per_shard,
                "dtype": ids_dtype(encoder.vocab).name, "tokenizer": encoder.fingerprint()}
    _claim(out, settings)
    encoder.vocab.save(out / "vocab.json")
    stats, metas = ManifestStats(), {}
    total = -(-_count_lines(manifest) // lines_per_shard)
    with _progress(progress, total) as advance:
        shards = _shard_docs(manifest, stats, strict, lines_per_shard)
        jobs = _todo(shards, out, metas, settings["dtype"], lines_per_shard, advance)
        for meta in run_jobs(encoder, jobs, workers):
            metas[meta["shard"]] = meta
            advance()
    summary = _write_index(out, settings, metas, stats)
    summary.written = sum(m.get("written", True) for m in metas.values())
    summary.seconds = time.perf_counter() - start
    if not summary.documents:
        raise PretokenizeError(f"{manifest}: no usable documents ({summary.line()})")
    return summary


def _claim(out: Path, settings: dict) -> None:
    """Refuse a folder that holds something else, or shards made with other settings."""
    marker = out / "config.json"
    if marker.is_file():
        old = read_json_object(marker, PretokenizeError)
        if old != settings:
            what = ", ".join(k for k in settings if old.get(k) != settings[k])
            raise PretokenizeError(f"{out} holds shards made with another {what}; use another "
                                   f"--out or delete it")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PretokenizeError(f"{out} exists and is not a shard folder (no config.json)")
    else:
        atomic_write_text(marker, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    for stale in out.glob(".*.tmp*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)


def _shard_docs(manifest: Path, stats: ManifestStats, strict: bool,
                n: int) -> Iterator[tuple[int, list[ManifestDocument]]]:
    """(shard number, its usable documents) in manifest order, one manifest pass."""
    current, docs = -1, []
    for doc in iter_manifest(manifest, stats, strict=strict):
        k = (doc.line - 1) // n
        if k != current and docs:
            yield current, docs
            docs = []
        current = k
        docs.append(doc)
    if docs:
        yield current, docs


def _todo(shards: Iterator[tuple[int, list[ManifestDocument]]], out: Path, metas: dict,
          dtype: str, lines_per_shard: int, kept: Callable[[], None]) -> Iterator[ShardJob]:
    """The shards still to encode; finished ones with the same digest go into `metas`."""
    for k, docs in shards:
        digest = docs_digest(docs)
        meta = read_meta(out / shard_name(k))
        if meta is not None and meta.get("digest") == digest:
            metas[k] = {**meta, "written": False}
            kept()
            continue
        yield ShardJob(out, dtype, lines_per_shard, k, digest, docs)


def docs_digest(docs: list[ManifestDocument]) -> str:
    """A digest of the documents' lines: texts and resolved media paths."""
    h = hashlib.sha256()
    for doc in docs:
        segs = [(s.kind, str(s.value)) for s in doc.segments]
        h.update(json.dumps([doc.line, segs], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


@dataclass
class ShardJob:
    """Shard `index` of `out`: its usable manifest documents and their digest."""

    out: Path
    dtype: str
    lines_per_shard: int
    index: int
    digest: str
    docs: list[ManifestDocument]


def encode_shard(encoder: DocumentEncoder, job: ShardJob) -> dict:
    """Encode one shard's documents and write it; its meta (counts, skipped, digest)."""
    encoded, skipped, examples = [], Counter(), {}
    for doc in job.docs:
        try:
            encoded.append(encoder.encode(doc))
        except SkipDocument as e:
            skipped[e.reason] += 1
            examples.setdefault(e.reason, str(e))
    k, n = job.index, job.lines_per_shard
    meta = {"shard": k, "digest": job.digest, "documents": len(encoded),
            "tokens": encoder.count_tokens([d.ids for d in encoded]),
            "skipped": dict(skipped), "examples": examples, "lines": [k * n + 1, (k + 1) * n]}
    write_shard(job.out / shard_name(k), encoded, np.dtype(job.dtype), meta)
    return meta


# ---- workers -------------------------------------------------------------------------------
_WORKER: DocumentEncoder | None = None


def run_jobs(encoder: DocumentEncoder, jobs: Iterator[ShardJob], workers: int) -> Iterator[dict]:
    """Encode the shards of `jobs`, in this process or in `workers` spawned ones; their metas
    as they finish (at most 2 * workers shards in flight)."""
    if workers == 1:
        with single_thread():
            yield from (encode_shard(encoder, job) for job in jobs)
        return
    init = (encoder.folder, encoder.strict, encoder.name)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=init)
    pending: set = set()
    try:
        for job in jobs:
            pending.add(pool.submit(_encode_job, job))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    finally:  # on an error or Ctrl-C, drop the queued shards (finished ones stay)
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(folder: Path, strict: bool, name: str) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = DocumentEncoder(folder, strict=strict, name=name)


def _encode_job(job: ShardJob) -> dict:
    return encode_shard(_WORKER, job)


class _progress:
    """A rich progress bar over shards (silent when disabled or not on a terminal)."""

    def __init__(self, enabled: bool, total: int) -> None:
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("tokenize"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("shards"), TimeElapsedColumn(), console=console,
                            transient=True, disable=not (enabled and console.is_terminal))
        self.task = self.bar.add_task("shards", total=total)

    def __enter__(self) -> Callable[[], None]:
        self.bar.__enter__()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _write_index(out: Path, settings: dict, metas: dict, stats: ManifestStats) -> TokenizeSummary:
    """Write index.json (finished shards in order, totals), drop stale shards; the totals."""
    summary = TokenizeSummary(out, shards=len(metas))
    summary.skipped.update(stats.skipped)
    summary.examples.update(stats.examples)
    shards = []
    for k in sorted(metas):
        m = metas[k]
        summary.documents += m["documents"]
        summary.tokens.update(m["tokens"])
        summary.skipped.update(m["skipped"])
        for reason, example in m["examples"].items():
            summary.examples.setdefault(reason, example)
        shards.append({"name": shard_name(k), "documents": m["documents"],
                       "tokens": sum(m["tokens"].values())})
    keep = {s["name"] for s in shards}
    for folder in out.glob("shard-*"):
        if folder.name not in keep:
            shutil.rmtree(folder)
    index = {**settings, "shards": shards, "documents": summary.documents,
             "tokens": {m: summary.tokens[m] for m in MODALITIES},
             "skipped": dict(sorted(summary.skipped.items())),
             "examples": dict(sorted(summary.examples.items()))}
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    return summary


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
