"""The modality grammar: every sampled sequence decodes, whatever the logits."""

from __future__ import annotations

import random

import pytest

from omnitok.generate.engine import Engine, Guidance, Request
from omnitok.generate.grammar import AudioCursor, Grammar, GrammarError, Phase
from omnitok.generate.sampling import ModalitySampling, SamplingParams
from omnitok.tokenizers.document import AudioSegment, DocumentCodec, ImageSegment, TextSegment
from omnitok.tokenizers.patterns import make_pattern
from omnitok.tokenizers.vocab import AudioSpec, Vocab

from .conftest import RandomLogits

GRID = (3, 4)
MAX_FRAMES = 6


class Chars:
    """A text codec over 50 ids (any id sequence decodes)."""

    vocab_size = 50

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 40 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i + 40) for i in ids)


def vocab_for(pattern: str, n_q: int = 3) -> Vocab:
    return Vocab(text_size=50, image_size=32, max_grid=8,
                 audio=AudioSpec(16, n_q, 16000, 50, pattern=pattern))


def walk(cursor: AudioCursor, frames: int) -> tuple[list[int], list[int]]:
    """Drive a cursor to exactly `frames` frames; the (levels, frames) of the ids it takes."""
    levels, cells = [], []
    while True:
        options, opens, eoa = cursor.options()
        if opens and cursor.opened_frames() < frames:
            level = 0
        else:
            rest = [lv for lv in options if not (opens and lv == 0)]
            if not rest:
                assert eoa
                return levels, cells
            level = rest[0]
        cells.append(cursor.frame_of_next(level))
        levels.append(level)
        cursor.advance(level)


@pytest.mark.parametrize("pattern", ["flatten", "delay"])
@pytest.mark.parametrize("n_q", [1, 2, 3, 4])
def test_cursor_follows_the_pattern_order(pattern, n_q):
    for frames in range(1, 7):
        cursor = AudioCursor(n_q, pattern == "delay")
        levels, cells = walk(cursor, frames)
        ref_levels, ref_frames = make_pattern(pattern, n_q).order(frames)
        assert levels == ref_levels.tolist() and cells == ref_frames.tolist()
        assert cursor.closing_cost() == 0 and cursor.opened_frames() == frames


def run_random(pattern: str, target: str, n: int, seed: int, guided: bool = False):
    vocab = vocab_for(pattern)
    grammar = Grammar(vocab, image_grid=GRID, audio=True, target=target,
                      max_audio_frames=MAX_FRAMES)
    flat = SamplingParams(1.0, 0, 1.0, 1.0)
    engine = Engine(RandomLogits(vocab.padded_size, seed=seed), grammar,
                    ModalitySampling(flat, flat, flat), Guidance(2.0) if guided else None)
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        need = {"image": grammar.image_cost() - 1, "audio": 4}.get(target, 1)
        state, opening = grammar.start(rng.randint(need, 60))
        requests.append(Request([1] + opening, state, [1, 7] + opening if guided else None,
                                seed=seed * n + i))
    budgets = [r.state.remaining for r in requests]
    for start in range(0, n, 250):
        for _ in engine.run(requests[start:start + 250]):
            pass
    return vocab, requests, budgets


@pytest.mark.parametrize("pattern", ["flatten", "delay"])
@pytest.mark.parametrize("target", ["text", "image", "audio", "auto"])
def test_a_thousand_random_sequences_decode(pattern, target):
    vocab, requests, budgets = run_random(pattern, target, 1000, seed=len(target))
    codec = DocumentCodec(vocab, Chars())
    kinds = set()
    for r, budget in zip(requests, budgets):
        assert len(r.tokens) <= budget
        ids = r.state.history
        ids = ids[:-1] if ids[-1] == vocab.special("<eos>") else ids
        doc = codec.decode(ids)  # raises if the grammar let anything through
        kinds |= {type(s) for s in doc}
        for seg in doc:
            if isinstance(seg, ImageSegment):
                assert tuple(seg.codes.shape) == GRID
            if isinstance(seg, AudioSegment):
                assert 1 <= seg.codes.shape[1] <= MAX_FRAMES
        if target == "image":
            assert len(doc) == 1 and isinstance(doc[0], ImageSegment)
        elif target == "audio":
            assert len(doc) == 1 and isinstance(doc[0], AudioSegment)
        elif target == "text":
            assert all(isinstance(s, TextSegment) for s in doc)
    if target == "auto":  # the model may choose any mix, several segments in one answer
        assert kinds == {TextSegment, ImageSegment, AudioSegment}


def test_guided_rows_decode_too():
    vocab, requests, _ = run_random("delay", "audio", 50, seed=3, guided=True)
    codec = DocumentCodec(vocab, Chars())
    for r in requests:
        assert isinstance(codec.decode(r.state.history)[0], AudioSegment)


def test_an_image_is_not_begun_without_room():
    vocab = vocab_for("flatten")
    grammar = Grammar(vocab, image_grid=GRID, audio=True, target="auto")
    boi, boa = vocab.special("<boi>"), vocab.special("<boa>")
    state, _ = grammar.start(grammar.image_cost() - 1)
    assert not grammar.allowed(state)[boi] and grammar.allowed(state)[boa]
    state.remaining = grammar.image_cost()
    assert grammar.allowed(state)[boi]
    state.remaining = grammar.audio_min_cost() - 1
    assert not grammar.allowed(state)[boa]


def test_audio_closes_within_the_budget():
    vocab = vocab_for("delay")
    grammar = Grammar(vocab, audio=True, target="audio", max_audio_frames=100)
    eoa = vocab.special("<eoa>")
    for budget in range(4, 20):
        state, _ = grammar.start(budget)
        while not state.done:  # always open a frame when allowed: the budget must stop it
            mask = grammar.allowed(state)
            level0 = vocab.range("audio_0")
            pick = level0.start if mask[level0.start] else int(mask.nonzero()[0])
            grammar.advance(state, pick)
        assert state.history[-1] == eoa and state.remaining >= 0


def test_illegal_ids_and_impossible_targets_are_refused():
    vocab = vocab_for("flatten")
    grammar = Grammar(vocab, image_grid=GRID, audio=True, target="image")
    state, opening = grammar.start(20)
    assert opening == [vocab.special("<boi>")] and state.phase == Phase.IMAGE_H
    with pytest.raises(GrammarError, match="not allowed"):
        grammar.advance(state, vocab.range("text").start)
    with pytest.raises(GrammarError, match="no image tokenizer"):
        Grammar(Vocab(text_size=50), target="image")
    with pytest.raises(GrammarError, match="no audio tokenizer"):
        Grammar(vocab, target="audio")
    with pytest.raises(GrammarError, match="unknown target"):
        Grammar(vocab, target="video")


def test_text_target_never_opens_media():
    vocab = vocab_for("flatten")
    grammar = Grammar(vocab, image_grid=GRID, audio=True, target="text")
    state, _ = grammar.start(100)
    mask = grammar.allowed(state)
    assert not mask[vocab.special("<boi>")] and not mask[vocab.special("<boa>")]
    assert mask[vocab.special("<eos>")] and mask[vocab.range("text").start]
    assert not mask[vocab.range("image").start]
    expected = [vocab.special("<eos>"), *range(*_text_span(vocab))]
    assert mask.nonzero().flatten().tolist() == expected


def _text_span(vocab: Vocab) -> tuple[int, int]:
    r = vocab.range("text")
    return r.start, r.stop
