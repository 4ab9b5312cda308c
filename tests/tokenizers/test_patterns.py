import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnitok import OmnitokError
from omnitok.tokenizers.document import AudioSegment, Document, DocumentCodec, DocumentError
from omnitok.tokenizers.patterns import DelayPattern, FlattenPattern, PatternError, make_pattern
from omnitok.tokenizers.vocab import AudioSpec, Vocab


def make_vocab(n_q: int, codebook_size: int, text_size: int = 7, image_size: int = 5) -> Vocab:
    audio = AudioSpec(codebook_size=codebook_size, n_q=n_q, sample_rate=24000, frame_rate=75.0)
    return Vocab(text_size=text_size, image_size=image_size, audio=audio, max_grid=3)


def random_codes(n_q: int, t: int, codebook_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, codebook_size, (n_q, t), generator=g)


grids = st.tuples(st.integers(1, 8), st.integers(0, 12), st.integers(1, 40),
                  st.integers(0, 50), st.integers(0, 2**31 - 1))


@settings(max_examples=150, deadline=None)
@given(grids)
def test_round_trip_matches_loop_reference(grid):
    n_q, t, codebook_size, text_size, seed = grid
    vocab = make_vocab(n_q, codebook_size, text_size=text_size + 1)
    pattern = FlattenPattern(n_q)
    codes = random_codes(n_q, t, codebook_size, seed)
    ids = pattern.build(codes, vocab)
    expected = [vocab.range("audio", k).start + int(codes[k, i])
                for i in range(t) for k in range(n_q)]
    assert ids.dtype == torch.long and ids.shape == (t * n_q,)
    assert ids.tolist() == expected
    for step, token_id in enumerate(ids.tolist()):
        r = vocab.locate(token_id)
        assert r.name == f"audio_{step % n_q}" == f"audio_{pattern.level_at(step)}"
    back = pattern.revert(ids, vocab)
    assert back.dtype == torch.long and back.shape == (n_q, t)
    assert torch.equal(back, codes)


@pytest.mark.parametrize("n_q", [1, 4])
def test_empty_frames(n_q):
    vocab, pattern = make_vocab(n_q, 3), FlattenPattern(n_q)
    ids = pattern.build(torch.zeros(n_q, 0, dtype=torch.long), vocab)
    assert ids.shape == (0,)
    assert pattern.revert(ids, vocab).shape == (n_q, 0)
    assert pattern.revert(torch.zeros(0, dtype=torch.int32), vocab).shape == (n_q, 0)


def test_level_at_scalar_and_tensor():
    pattern = FlattenPattern(3)
    assert [pattern.level_at(s) for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert pattern.level_at(torch.arange(7)).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(PatternError):
        pattern.level_at(-1)


def test_build_accepts_int32_and_non_contiguous():
    vocab, pattern = make_vocab(2, 9), FlattenPattern(2)
    codes = random_codes(3, 2, 9, 0).T  # (2, 3) non-contiguous
    assert torch.equal(pattern.build(codes.int(), vocab), pattern.build(codes, vocab))
    assert torch.equal(pattern.revert(pattern.build(codes, vocab), vocab), codes)


@pytest.mark.parametrize("n_q", [0, -1, 2.0])
def test_bad_n_q(n_q):
    with pytest.raises(PatternError):
        FlattenPattern(n_q)


@pytest.mark.parametrize("codes, match", [
    (torch.zeros(3, 2, dtype=torch.long), r"shape \(K=2"),
    (torch.zeros(2, dtype=torch.long), "dimension"),
    (torch.zeros(2, 2), "integer"),
    (torch.zeros(2, 2, dtype=torch.bool), "integer"),
    (torch.tensor([[0, 1], [5, 0]]), r"code 5 at level 1, frame 0 \(step 1\)"),
    (torch.tensor([[0, 1, 0], [0, 0, -1]]), r"code -1 at level 1, frame 2 \(step 5\)"),
    ([[0, 1]], "torch.Tensor"),
])
def test_build_errors(codes, match):
    with pytest.raises(PatternError, match=match):
        FlattenPattern(2).build(codes, make_vocab(2, 5))


def test_vocab_mismatch():
    with pytest.raises(PatternError, match="no audio"):
        FlattenPattern(2).build(torch.zeros(2, 1, dtype=torch.long), Vocab(text_size=4))
    with pytest.raises(PatternError, match="3 levels"):
        FlattenPattern(2).build(torch.zeros(2, 1, dtype=torch.long), make_vocab(3, 5))
    with pytest.raises(PatternError, match="3 levels"):
        FlattenPattern(2).revert(torch.zeros(2, dtype=torch.long), make_vocab(3, 5))


def test_revert_wrong_level_names_position():
    vocab, pattern = make_vocab(3, 4), FlattenPattern(3)
    ids = pattern.build(random_codes(3, 4, 4, 1), vocab)
    for pos in range(len(ids)):
        for wrong in (vocab.range("audio", (pos + 1) % 3).start, vocab.range("text").start,
                      vocab.range("image").start, 0):
            bad = ids.clone()
            bad[pos] = wrong
            with pytest.raises(PatternError, match=rf"at position {pos} is not an "
                                                   rf"audio_{pos % 3} id"):
                pattern.revert(bad, vocab)


@pytest.mark.parametrize("length", [1, 2, 4, 5, 7])
def test_revert_partial_frame(length):
    vocab, pattern = make_vocab(3, 4), FlattenPattern(3)
    ids = pattern.build(random_codes(3, 3, 4, 2), vocab)[:length]
    if length % 3:
        with pytest.raises(PatternError, match=f"{length} ids are not whole frames"):
            pattern.revert(ids, vocab)


def test_revert_errors_shape_dtype():
    vocab, pattern = make_vocab(2, 4), FlattenPattern(2)
    with pytest.raises(PatternError, match="dimension"):
        pattern.revert(torch.zeros(2, 2, dtype=torch.long), vocab)
    with pytest.raises(PatternError, match="integer"):
        pattern.revert(torch.zeros(4), vocab)


def test_error_hierarchy_and_equality():
    assert issubclass(PatternError, OmnitokError) and issubclass(PatternError, ValueError)
    assert FlattenPattern(2) == FlattenPattern(2) != FlattenPattern(3)


def delay_reference(codes: torch.Tensor, vocab: Vocab) -> list[int]:
    """Step s holds level k of frame s - k, written as plain loops."""
    k_, t_ = codes.shape
    return [vocab.range("audio", k).start + int(codes[k, s - k])
            for s in range(t_ + k_ - 1) for k in range(k_) if 0 <= s - k < t_]


@settings(max_examples=150, deadline=None)
@given(grids)
def test_delay_round_trip_matches_loop_reference(grid):
    n_q, t, codebook_size, text_size, seed = grid
    vocab = make_vocab(n_q, codebook_size, text_size=text_size + 1)
    pattern = DelayPattern(n_q)
    codes = random_codes(n_q, t, codebook_size, seed)
    ids = pattern.build(codes, vocab)
    assert ids.tolist() == delay_reference(codes, vocab)
    assert [vocab.locate(i).level for i in ids.tolist()] == pattern.levels(len(ids)).tolist()
    assert torch.equal(pattern.revert(ids, vocab), codes)


def test_delay_levels_lag_by_level():
    # 3 levels, 4 frames: steps (0:k0) (1:k0,k1) (2:k0,k1,k2) (3:k0,k1,k2) (4:k1,k2) (5:k2)
    assert DelayPattern(3).levels(12).tolist() == [0, 0, 1, 0, 1, 2, 0, 1, 2, 1, 2, 2]
    _, frames = DelayPattern(3).order(4)
    assert frames.tolist() == [0, 1, 0, 2, 1, 0, 3, 2, 1, 3, 2, 3]
    assert DelayPattern(1).levels(5).tolist() == [0] * 5
    assert make_pattern("delay", 2) == DelayPattern(2)
    with pytest.raises(PatternError, match="unknown RVQ pattern"):
        make_pattern("zigzag", 2)


def test_documents_with_the_delay_pattern():
    audio = AudioSpec(codebook_size=6, n_q=3, sample_rate=16000, frame_rate=50, pattern="delay")
    vocab = Vocab(text_size=5, audio=audio)
    codec = DocumentCodec(vocab)
    assert isinstance(codec.pattern, DelayPattern)
    doc = Document([AudioSegment(random_codes(3, 5, 6, 0)), AudioSegment(random_codes(3, 0, 6, 1))])
    ids = codec.encode(doc)
    assert codec.decode(ids) == doc
    assert ids[2:17] == DelayPattern(3).build(doc[0].codes, vocab).tolist()
    broken = ids[:4] + ids[5:]  # one id removed: levels shift inside the segment
    with pytest.raises(DocumentError, match="position"):
        codec.decode(broken)
