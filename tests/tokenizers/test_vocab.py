"""The unified vocabulary: layout invariants and round trips over random layouts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnitok.tokenizers.vocab import AudioSpec, Modality, Vocab, VocabError


@st.composite
def vocabs(draw):
    audio = None
    if draw(st.booleans()):
        audio = AudioSpec(codebook_size=draw(st.integers(1, 3000)), n_q=draw(st.integers(1, 9)),
                          sample_rate=draw(st.sampled_from([16000, 24000, 44100])),
                          frame_rate=draw(st.sampled_from([50, 75, 86.1328125])))
    extra = tuple(f"<x{i}>" for i in range(draw(st.integers(0, 5))))
    return Vocab(text_size=draw(st.integers(1, 70000)), image_size=draw(st.integers(0, 20000)),
                 audio=audio, max_grid=draw(st.integers(1, 128)),
                 pad_to=draw(st.sampled_from([1, 8, 64, 128])),
                 specials=("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>") + extra)


@settings(max_examples=150, deadline=None)
@given(vocabs())
def test_layout_invariants(vocab):
    ranges = vocab.ranges
    assert ranges[0].start == 0
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop == b.start and a.size > 0  # contiguous, disjoint, non-empty
    assert ranges[-1].stop == vocab.size
    assert vocab.padded_size % vocab.pad_to == 0
    assert vocab.size <= vocab.padded_size < vocab.size + vocab.pad_to
    if vocab.audio:
        levels = vocab.audio_ranges
        assert [r.level for r in levels] == list(range(vocab.audio.n_q))
        assert all(r.size == vocab.audio.codebook_size for r in levels)
    assert vocab.range("text").size == vocab.text_size


@settings(max_examples=150, deadline=None)
@given(vocabs(), st.data())
def test_every_id_round_trips(vocab, data):
    ids = data.draw(st.lists(st.integers(0, vocab.size - 1), min_size=1, max_size=50))
    ids += [r.start for r in vocab.ranges] + [r.stop - 1 for r in vocab.ranges]
    for i in ids:
        r, local = vocab.to_local(i)
        assert i in r and 0 <= local < r.size
        assert vocab.modality_of(i) == r.modality
        assert vocab.to_global(r.name, local) == i
        if r.modality == Modality.AUDIO:
            assert vocab.to_global("audio", local, level=r.level) == i
    t = torch.tensor(ids)
    idx = vocab.range_ids(t)
    assert [vocab.ranges[k].name for k in idx.tolist()] == [vocab.locate(i).name for i in ids]


@settings(max_examples=100, deadline=None)
@given(vocabs())
def test_out_of_range_ids_are_errors(vocab):
    for bad in (-1, vocab.size, vocab.padded_size, vocab.padded_size + 5):
        with pytest.raises(VocabError, match="outside the vocabulary"):
            vocab.to_local(bad)
    text = vocab.range("text")
    with pytest.raises(VocabError):
        vocab.to_global("text", text.size)
    with pytest.raises(VocabError):
        vocab.to_global("text", torch.tensor([0, text.size]))
    with pytest.raises(VocabError):
        vocab.to_global("text", -1)
    assert torch.equal(vocab.to_global("text", torch.tensor([[0, text.size - 1]])),
                       torch.tensor([[text.start, text.stop - 1]]))


@settings(max_examples=50, deadline=None)
@given(vocabs())
def test_json_round_trip(tmp_path_factory, vocab):
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.ranges == vocab.ranges


def test_grid_and_specials():
    vocab = Vocab(text_size=10, max_grid=16)
    assert vocab.locate(vocab.grid(1)).name == "grid" and vocab.to_local(vocab.grid(16))[1] == 15
    with pytest.raises(VocabError, match="outside 1..16"):
        vocab.grid(17)
    assert [vocab.grid_side(vocab.grid(n)) for n in (1, 7, 16)] == [1, 7, 16]
    with pytest.raises(VocabError, match="not an image grid token"):
        vocab.grid_side(vocab.special("<bos>"))
    with pytest.raises(VocabError, match="must be integers"):
        vocab.to_global("text", torch.tensor([1.7]))
    assert vocab.special("<boi>") == 3
    with pytest.raises(VocabError, match="unknown special"):
        vocab.special("<nope>")
    with pytest.raises(VocabError, match="no 'image' range"):
        vocab.range("image")
    assert not vocab.has("audio") and vocab.has("text")


def test_malformed_vocabularies(tmp_path):
    with pytest.raises(VocabError, match="missing"):
        Vocab(text_size=10, specials=("<pad>", "<bos>"))
    with pytest.raises(VocabError, match="duplicate"):
        Vocab(text_size=10, specials=("<pad>",) * 8)
    path = tmp_path / "vocab.json"
    Vocab(text_size=10, image_size=5).save(path)
    d = json.loads(path.read_text())
    d["ranges"]["image"] = [82, 88]
    path.write_text(json.dumps(d))
    with pytest.raises(VocabError, match="disagree"):
        Vocab.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(VocabError, match="JSON object"):
        Vocab.load(path)
    path.write_text('{"format": "something-else"}')
    with pytest.raises(VocabError, match="not an omnitok vocabulary"):
        Vocab.load(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(VocabError, match="not valid JSON"):
        Vocab.load(path)
