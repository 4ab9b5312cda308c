"""Training on a mix of shard folders (`omnitok train --mix FOLDER:REPEATS`): the mix's
documents against the folders' own, its span table against a per-document rebuild, packing
over it, and the command line."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from omnitok.cli import main
from omnitok.tokenizers.vocab import Vocab
from omnitok.train.mix import MixError, ShardMix, copies, parse_mix
from omnitok.train.packing import PackedDataset, plan_epoch
from omnitok.train.shards import TokenShards, write_shards


@pytest.fixture(scope="module")
def two_folders(generated, tmp_path_factory):
    """The generated corpus split into two shard folders: documents 0-399 and 400-599."""
    shards, docs = generated
    root = tmp_path_factory.mktemp("mix")
    write_shards(root / "a", shards.vocab, docs[:400], docs_per_shard=150)
    write_shards(root / "b", shards.vocab, docs[400:], docs_per_shard=150)
    return TokenShards(root / "a"), TokenShards(root / "b"), docs


def test_parse_mix():
    assert parse_mix("runs/x:2").repeats == 2.0 and parse_mix("runs/x:2").folder == "runs/x"
    assert parse_mix("a:b/c:.25").folder == "a:b/c" and parse_mix("a:b/c:.25").repeats == 0.25
    for bad in ("runs/x", "runs/x:", ":2", "runs/x:0", "runs/x:-1", "runs/x:two", "x:nan",
                "x:inf"):
        with pytest.raises(MixError):
            parse_mix(bad)


def test_copies_repeat_every_document_and_a_seeded_share():
    got = copies(10, 2.5, seed=3, which=1)
    counts = Counter(got.tolist())
    assert sorted(counts) == list(range(10))
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert got.tolist() == copies(10, 2.5, seed=3, which=1).tolist()
    assert copies(1000, 0.3, 3, 1).tolist() != copies(1000, 0.3, 4, 1).tolist()
    assert len(copies(1000, 0.3, 3, 1)) == 300 and len(set(copies(1000, 0.3, 3, 1))) == 300
    assert copies(7, 1.0, 0, 0).tolist() == list(range(7))


def test_mix_documents_and_spans_are_the_folders_own(two_folders):
    a, b, docs = two_folders
    mix = ShardMix([a, b], [1.0, 2.5], seed=0)
    assert len(mix) == 400 + 500
    expected = Counter({i: 1 for i in range(400)})
    for i in range(900):
        doc = mix[i]
        source = a if mix.source_of[i] == 0 else b
        want = docs[int(mix.doc_of[i]) + (0 if source is a else 400)]
        assert doc.ids.tolist() == want.ids.tolist() and doc.spans.tolist() == \
            want.spans.tolist()
        assert mix.lengths[i] == len(want.ids)
        if source is b:
            expected[400 + int(mix.doc_of[i])] += 1
    assert sorted(Counter(expected.values()).items()) == [(1, 400), (2, 100), (3, 100)]
    spans, offsets = mix.span_table()
    rebuilt = np.concatenate([mix[i].spans for i in range(len(mix))])
    assert np.array_equal(spans, rebuilt)
    assert np.array_equal(np.diff(offsets), [len(mix[i].spans) for i in range(len(mix))])
    with pytest.raises(IndexError):
        mix[900]


def test_packing_a_mix_places_every_copy_once(two_folders):
    a, b, _ = two_folders
    mix = ShardMix([a, b], [1.0, 2.0], seed=1)
    spans, offsets = mix.span_table()
    plan = plan_epoch(mix.lengths, spans, offsets, 256, seed=0, epoch=0, n_q=2)
    whole = Counter(int(d) for d, start, _ in plan.pieces if start == 0)
    assert sorted(whole) == list(range(len(mix))) and set(whole.values()) == {1}
    assert plan.tokens == int(mix.lengths.sum())
    data = PackedDataset(mix, 256, seed=0)
    row = data[(0, 0)]
    first = plan.row(0)[0]
    n = int(first[2] - first[1])
    assert row["ids"][:n].tolist() == mix[int(first[0])].ids[first[1]:first[2]].tolist()


def test_a_mix_needs_one_vocabulary(two_folders, tmp_path):
    a, _, docs = two_folders
    d = {k: v for k, v in a.vocab.to_dict().items() if k != "ranges"}
    other = Vocab.from_dict({**d, "text_size": a.vocab.text_size + 64})
    write_shards(tmp_path / "c", other, docs[:5])
    with pytest.raises(MixError, match="another tokenizer"):
        ShardMix([a, TokenShards(tmp_path / "c")], [1.0, 1.0])


def test_train_with_a_mix(two_folders, tmp_path, capsys, train_argv):
    a, b, _ = two_folders
    out = tmp_path / "run"
    assert main(train_argv(a.folder, out, "--mix", f"{b.folder}:2", steps=3)) == 0
    assert f"{b.folder} x2 (400 documents)" in capsys.readouterr().out
    saved = json.loads((out / "train.json").read_text())["train"]
    assert saved["mix"] == [f"{b.folder}:2"]
    # resuming needs the same mix
    assert main(train_argv(a.folder, out, "--resume", "--mix", f"{b.folder}:3", steps=4)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mix" in err[0]
    assert main(train_argv(a.folder, out, "--resume", "--mix", f"{b.folder}:2", steps=4)) == 0
    for bad in (f"{b.folder}", f"{tmp_path / 'nowhere'}:2"):
        assert main(train_argv(a.folder, tmp_path / "bad", "--mix", bad, steps=1)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("--mix" in err[0] or "no such shard folder" in err[0])
