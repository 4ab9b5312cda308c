"""Pre-tokenized shards: exact round trips against the DocumentCodec, determinism across
worker counts, resuming, bad input counted and skipped, the command line."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from omnitok.cli import main
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import AudioSegment, Document, TextSegment
from omnitok.train.encode import BadDocument
from omnitok.train.manifest import ManifestError, read_manifest
from omnitok.train.pretokenize import PretokenizeError, tokenize_corpus
from omnitok.train.shards import SPAN_KINDS, ShardError, TokenShards


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, world, tok):
    out = tmp_path_factory.mktemp("shards") / "out"
    summary = tokenize_corpus(world / "train.jsonl", tok, out, lines_per_shard=8,
                              progress=False)
    return out, summary


def test_shards_decode_to_the_codec_ids(shards, world, tok):
    out, summary = shards
    bundle = TokenizerBundle.load(tok)
    codec = bundle.codec()
    docs, _ = read_manifest(world / "train.jsonl")
    data = TokenShards(out)
    assert len(data) == len(docs) == summary.documents == 21 and summary.shards == 3
    for i, doc in enumerate(docs):
        document = expected_document(bundle, doc)
        expected = codec.encode(document)
        got = data[i]
        assert got.ids.tolist() == expected and got.line == doc.line
        assert [(SPAN_KINDS[k], a, b) for k, a, b in got.spans.tolist()] == \
            [(m.value, a, b) for m, a, b in codec.segment_spans(expected)]
        assert codec.decode(got.ids).normalized() == document.normalized()
    assert data.lengths.sum() == sum(summary.tokens.values())
    assert data.ids(0).dtype == np.uint16 and data.vocab == bundle.vocab


def expected_document(bundle: TokenizerBundle, doc) -> Document:
    """The manifest document encoded segment by segment; an audio span is the frames from
    round(from * rate) to round(to * rate) of its whole file's codes."""
    segments = []
    for seg in doc.segments:
        [encoded] = bundle.document([(seg.kind, seg.value)]).segments
        if seg.span is not None:
            rate, (start, stop) = bundle.audio.frame_rate, seg.span
            stop = encoded.codes.shape[1] if stop is None else round(stop * rate)
            encoded = AudioSegment(encoded.codes[:, round(start * rate):stop])
        segments.append(encoded)
    return Document(segments)


def test_word_spans_tile_their_clip(shards, world, tok):
    out, _ = shards
    bundle = TokenizerBundle.load(tok)
    docs, _ = read_manifest(world / "train.jsonl")
    data = TokenShards(out)
    spoken = [i for i, d in enumerate(docs) if any(s.span for s in d.segments)]
    # text->audio, and the all-three lines where the speech follows the text
    assert spoken == [i for i, d in enumerate(docs) if "text->audio" in d.meta["direction"]]
    assert len(spoken) > 3
    for i in spoken:
        decoded = bundle.codec().decode(data[i].ids)
        clips = {s.value for s in docs[i].segments if s.span}
        [clip] = clips
        audio = [s.codes for s in decoded if isinstance(s, AudioSegment)]
        words = [s.text for s in decoded if isinstance(s, TextSegment)]
        caption = docs[i].meta["caption"].split()  # the first word decodes joined to "say:"
        assert len(audio) == 7 and [w.strip() for w in words[-6:]] == caption[1:]
        assert words[-7].endswith(caption[0])
        assert torch.equal(torch.cat(audio, 1), bundle.encode_file(clip)[1])
        assert all(a.shape[1] > 0 for a in audio)


def test_rerun_keeps_shards_and_output_is_byte_identical(shards, world, tok, tmp_path):
    out, _ = shards
    before = digest(out)
    again = tokenize_corpus(world / "train.jsonl", tok, out, lines_per_shard=8, progress=False)
    assert again.written == 0 and digest(out) == before
    shutil.rmtree(out / "shard-00001")  # an interrupted run: one shard missing
    (out / "shard-00002" / "meta.json").unlink()  # another half-written one
    (out / ".shard-00003.x.tmp").mkdir()  # a killed run's temporary folder
    again = tokenize_corpus(world / "train.jsonl", tok, out, lines_per_shard=8, progress=False)
    assert again.written == 2 and digest(out) == before
    parallel = tokenize_corpus(world / "train.jsonl", tok, tmp_path / "p", workers=2,
                               lines_per_shard=8, progress=False)
    assert parallel.written == 3 and digest(tmp_path / "p") == before


def test_other_settings_are_refused(shards, world, tok):
    out, _ = shards
    with pytest.raises(PretokenizeError, match="another lines_per_shard"):
        tokenize_corpus(world / "train.jsonl", tok, out, lines_per_shard=5, progress=False)
    with pytest.raises(PretokenizeError, match="not a shard folder"):
        tokenize_corpus(world / "train.jsonl", tok, world, progress=False)


@pytest.fixture
def bad_corpus(world, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(world / "images", root / "images")
    shutil.copytree(world / "audio", root / "audio")
    (root / "images" / "broken.png").write_bytes(
        (world / "images" / "train-000000.png").read_bytes()[:60])  # truncated PNG
    (root / "audio" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (tmp_path / "outside.png").write_bytes(b"x")
    good = [[{"text": "draw: a red circle"}, {"image": "images/train-000000.png"}],
            [{"audio": "audio/train-000001.wav"}, {"text": "write: hello"}]]
    bad = [[{"text": "a"}, {"image": "images/missing.png"}],
           [{"image": "../outside.png"}],
           [{"text": "draw:"}, {"image": "images/broken.png"}],
           [{"audio": "audio/broken.wav"}],
           [{"text": "say:"}, {"text": "   "}],
           [{"image": "audio/train-000001.wav"}]]
    lines = [json.dumps({"segments": s}).encode() for s in [good[0], *bad, good[1]]]
    lines.insert(3, b'{"segments": [{"text": "caf\xe9"}]}')  # Latin-1, not UTF-8
    (root / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root / "m.jsonl"


def test_bad_input_is_counted_and_skipped(bad_corpus, tok, tmp_path):
    summary = tokenize_corpus(bad_corpus, tok, tmp_path / "s", lines_per_shard=3,
                              progress=False)
    assert summary.documents == 2
    assert dict(summary.skipped) == {
        "missing file": 1, "path escapes the manifest folder": 1, "not UTF-8": 1,
        "unreadable image": 1, "unreadable audio": 1, "empty text": 1, "wrong media type": 1}
    assert summary.examples["empty text"].startswith("m.jsonl:7: empty text")
    assert "broken.png" in summary.examples["unreadable image"]
    data = TokenShards(tmp_path / "s")
    assert data.lines.tolist() == [1, 9]
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["skipped"] == dict(sorted(summary.skipped.items()))
    with pytest.raises(ManifestError, match="m.jsonl:2: missing file"):
        tokenize_corpus(bad_corpus, tok, tmp_path / "strict", strict=True, progress=False)
    bad_corpus.write_text(json.dumps([{"text": "ok"}, {"image": "images/broken.png"}]) + "\n")
    with pytest.raises(PretokenizeError, match="no usable documents.*1 unreadable image"):
        tokenize_corpus(bad_corpus, tok, tmp_path / "none", progress=False)
    with pytest.raises(BadDocument, match="m.jsonl:1: unreadable image"):
        tokenize_corpus(bad_corpus, tok, tmp_path / "strict", strict=True, progress=False)


def test_tokenize_command(capsys, world, tok, tmp_path):
    argv = ["tokenize", str(world / "train.jsonl"), "--tokenizer", str(tok), "--out",
            str(tmp_path / "s"), "--lines-per-shard", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "21 documents" in out and "2 shards (2 written, 0 kept)" in out and "image" in out
    assert main([*argv[:-1], "4"]) == 1
    assert capsys.readouterr().err.startswith("omnitok: error: ")
    assert main(["tokenize", str(world / "nope.jsonl"), "--tokenizer", str(tok), "--out",
                 str(tmp_path / "t")]) == 1
    assert "cannot read manifest" in capsys.readouterr().err


def test_reader_refuses_unfinished_folders(shards, tmp_path):
    out, _ = shards
    with pytest.raises(ShardError, match="no index.json"):
        TokenShards(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "shard-00001")
    with pytest.raises(ShardError, match="missing shard"):
        TokenShards(copy)
