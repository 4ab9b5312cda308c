"""Text tokenizer: sentencepiece BPE with byte fallback, ids 0 .. vocab_size-1.

These are the *local* text ids; the unified vocabulary (`tokenizers/vocab.py`) offsets them.
The model has no bos/eos/pad of its own (the unified vocabulary has those), and `encode` never
adds any, even for a foreign model (e.g. a Llama `tokenizer.model`) that defines them.

A model trained here round-trips every string: `decode(encode(s)) == s` for any `str` without
surrogates (emoji, CJK, control characters, any run of spaces or newlines). That takes identity
normalization, no whitespace stripping, byte fallback, and one fix sentencepiece lacks: it
writes a space as U+2581 "▁", so a literal "▁" in the input would come back as a space. `encode`
therefore emits a literal "▁" as its three byte pieces, which decode to "▁" itself.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from pathlib import Path

import sentencepiece as spm
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from omnitok import OmnitokError, atomic_path

_WS = "\u2581"  # sentencepiece's visible space
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"  # ModelProto.normalizer_spec {add_dummy_prefix: false}
_MIN_VOCAB = 258  # 256 byte pieces, <unk>, "▁"
_MAX_SENTENCE_BYTES = 1 << 16
_CHUNK_CHARS = _MAX_SENTENCE_BYTES // 4  # a UTF-8 character is at most 4 bytes


class TextTokenizerError(OmnitokError, ValueError):
    """A missing or corrupt model or corpus file, an impossible vocab size, an id out of range."""


class TextTokenizer:
    """Sentencepiece BPE with byte fallback.

    ids are 0..vocab_size-1 (the local text range of the unified vocab).
    """

    FILENAME = "text.model"

    def __init__(self, model_proto: bytes) -> None:
        """`model_proto`: a serialized sentencepiece ModelProto (the bytes of a .model file)."""
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
            # Protobuf merges a repeated message field, so appending a NormalizerSpec that holds
            # only add_dummy_prefix=false gives the same model without the dummy prefix.
            self._sp_inner = spm.SentencePieceProcessor(model_proto=self._proto + _NO_DUMMY_PREFIX)
        except RuntimeError:
            self._sp = None
        if self._sp is None or self._sp.vocab_size() == 0:
            raise TextTokenizerError(
                "not a sentencepiece model (corrupt, truncated or another format)"
            )
        ws_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _WS.encode()]
        self._ws_ids = ws_ids if all(self._sp.is_byte(i) for i in ws_ids) else None

    def __reduce__(self) -> tuple:
        return type(self), (self._proto,)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load a .model file, or a folder with `text.model` (or a Llama `tokenizer.model`)."""
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in (cls.FILENAME, "tokenizer.model") if (path / n).is_file()]
            if not found:
                raise TextTokenizerError(f"{path}: folder has no {cls.FILENAME} or tokenizer.model")
            path = found[0]
        try:
            data = path.read_bytes()
        except OSError as e:  # missing, a directory, no permission
            raise TextTokenizerError(f"{path}: cannot read text tokenizer ({e.strerror})") from None
        try:
            return cls(data)
        except TextTokenizerError as e:
            raise TextTokenizerError(f"{path}: {e}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder/text.model` atomically; return its path."""
        path = Path(folder) / self.FILENAME
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._proto)
        return path

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model, exactly as `save` writes it."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        """Number of pieces; valid ids are 0 .. vocab_size-1."""
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        """`text` -> ids (len L, no bos/eos). Empty text -> []."""
        if self._ws_ids is None or _WS not in text:
            return self._sp.encode(text, add_bos=False, add_eos=False)
        first, *rest = text.split(_WS)
        ids = self._sp.encode(first, add_bos=False, add_eos=False)  # dummy prefix only at the start
        for part in rest:
            ids += self._ws_ids
            ids += self._sp_inner.encode(part, add_bos=False, add_eos=False) if part else []
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """B texts -> B id lists; texts without a literal "▁" go through one multi-threaded call."""
        out = [self.encode(t) if self._ws_ids is not None and _WS in t else None for t in texts]
        todo = [i for i, ids in enumerate(out) if ids is None]
        batch = self._sp.encode([texts[i] for i in todo], add_bos=False, add_eos=False)
        for i, ids in zip(todo, batch):
            out[i] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """ids (len L) -> text. An id outside 0 .. vocab_size-1 raises TextTokenizerError."""
        return self._sp.decode(self._checked(ids))

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` ("▁the", "<0x0A>", "<unk>", ...)."""
        return self._sp.id_to_piece(self._checked([i])[0])

    def _checked(self, ids: Sequence[int]) -> list[int]:
        ids, n = [int(i) for i in ids], self.vocab_size
        if (bad := next((i for i in ids if not 0 <= i < n), None)) is not None:
            raise TextTokenizerError(f"text id {bad} out of range 0..{n - 1}")
        return ids

    @classmethod
    def train(
        cls,
        sources: Sequence[str | os.PathLike],
        vocab_size: int = 8000,
        *,
        character_coverage: float = 1.0,
        max_sentences: int = 2_000_000,
        seed: int = 0,
        progress: bool = True,
    ) -> TextTokenizer:
        """Train BPE on the texts of `sources` (see `iter_texts`); deterministic for equal input.

        Texts longer than 16384 characters are cut into pieces of that length; if there are more
        than `max_sentences`, a uniform sample (seeded by `seed`) is used. Progress and a one-line
        summary go to stderr unless `progress=False`; nothing goes to stdout.
        """
        paths = [
            Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)
        ]
        _check_train_args(paths, vocab_size, character_coverage, max_sentences)
        console = Console(stderr=True) if progress else None
        start = time.perf_counter()
        sentences, seen, skipped = _read_corpus(paths, max_sentences, seed, console)
        if not sentences:
            raise TextTokenizerError(
                f"no text found in {', '.join(map(str, paths)) or '(no sources)'}"
            )
        status = (
            console.status(f"training BPE (vocab {vocab_size}) ...") if console else nullcontext()
        )
        with status:
            tok = cls(_train_spm(sentences, vocab_size, character_coverage, seed))
        if console:
            extra = f", {skipped} malformed lines skipped" if skipped else ""
            console.print(
                f"text tokenizer: {tok.vocab_size} pieces from {len(sentences)} of {seen} "
                f"sentences{extra} in {time.perf_counter() - start:.1f} s",
                soft_wrap=True,
            )
        return tok


def _check_train_args(
    paths: list[Path], vocab_size: int, coverage: float, max_sentences: int
) -> None:
    if vocab_size < _MIN_VOCAB:
        raise TextTokenizerError(
            f"vocab_size {vocab_size} is too small: byte fallback needs at least "
            f"{_MIN_VOCAB} (256 byte pieces, <unk>, '▁')"
        )
    if not 0.98 <= coverage <= 1.0:  # sentencepiece's own limits
        raise TextTokenizerError(f"character_coverage must be in [0.98, 1.0], got {coverage}")
    if max_sentences < 1:
        raise TextTokenizerError(f"max_sentences must be at least 1, got {max_sentences}")
    for p in paths:
        if not p.is_file():
            raise TextTokenizerError(f"{p}: no such text source file")


def _train_spm(
    sentences: list[str], vocab_size: int, character_coverage: float, seed: int
) -> bytes:
    """Run the sentencepiece trainer in memory; its errors become one-line TextTokenizerErrors."""
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=4,
        )
    except RuntimeError as e:
        raise _training_error(str(e), vocab_size) from None
    return model.getvalue()


def _training_error(msg: str, vocab_size: int) -> TextTokenizerError:
    if m := re.search(r"Please set it to a value <= (\d+)", msg):
        return TextTokenizerError(
            f"vocab_size {vocab_size} is too large for this corpus: at most {m[1]}"
        )
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):
        return TextTokenizerError(
            f"vocab_size {vocab_size} is too small for this corpus: at least "
            f"{m[1]} (256 byte pieces, <unk>, each character kept by coverage)"
        )
    return TextTokenizerError("sentencepiece training failed: " + " ".join(msg.split()))


def _read_corpus(
    paths: list[Path], max_sentences: int, seed: int, console: Console | None
) -> tuple[list[str], int, int]:
    """Read all sources -> (a uniform sample of <= `max_sentences` sentences, sentences seen,
    malformed lines skipped)."""
    rng, sample, seen, skipped = random.Random(seed), [], 0, 0
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} sentences"),
        TimeElapsedColumn(),
    )
    quiet = console is None or not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("reading", total=None)

        def add(text: str) -> None:
            nonlocal seen
            for i in range(0, len(text), _CHUNK_CHARS):
                seen += 1
                if len(sample) < max_sentences:
                    sample.append(text[i : i + _CHUNK_CHARS])
                elif (j := rng.randrange(seen)) < max_sentences:
                    sample[j] = text[i : i + _CHUNK_CHARS]
                if seen % 4096 == 0:
                    bar.update(task, completed=seen)

        for path in paths:
            bar.update(task, description=f"reading {escape(str(path))}")
            skipped += _drain(iter_texts(path), add)
            bar.update(task, completed=seen)
    return sample, seen, skipped


def _drain(texts: Generator[str, None, int], add: Callable[[str], None]) -> int:
    """Pass every text to `add`; return the generator's return value."""
    while True:
        try:
            add(next(texts))
        except StopIteration as stop:
            return stop.value


def iter_texts(path: str | os.PathLike) -> Generator[str, None, int]:
    """Yield the non-empty texts of one source file; return the number of malformed lines skipped.

    `*.jsonl`: each line is a document `{"segments": [{"text": ...}, {"image": ...}, ...]}` or a
    bare list of segments; every non-empty "text" segment is yielded, other segments are ignored.
    A line that is not UTF-8 JSON of that shape (or whose "text" is not a string) is skipped and
    counted; blank lines are ignored. Any other file: each non-empty line of the UTF-8 text, its
    "\\n" or "\\r\\n" terminator stripped (nothing else).
    """
    path = Path(path)
    jsonl = path.suffix.lower() == ".jsonl"
    skipped = 0
    try:
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                if jsonl:
                    texts = _segment_texts(raw)
                    skipped += texts is None
                    yield from texts or ()
                else:
                    yield from _plain_line(raw, path, n)
    except OSError as e:
        raise TextTokenizerError(f"{path}: cannot read text source ({e.strerror})") from None
    return skipped


def _plain_line(raw: bytes, path: Path, n: int) -> list[str]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TextTokenizerError(f"{path}:{n}: not UTF-8 text") from None
    line = line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")
    return [line] if line else []


def _segment_texts(raw: bytes) -> list[str] | None:
    """The non-empty texts of one JSONL line; None if the line is malformed."""
    if not raw.strip():
        return []
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, absurd nesting
        return None
    segments = doc.get("segments") if isinstance(doc, dict) else doc
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        return None
    texts = [s["text"] for s in segments if "text" in s]
    return [t for t in texts if t] if all(isinstance(t, str) for t in texts) else None
