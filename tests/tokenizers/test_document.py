import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnitok import OmnitokError
from omnitok.tokenizers.document import (
    AudioSegment,
    BadHeader,
    Document,
    DocumentCodec,
    DocumentError,
    ImageSegment,
    InvalidId,
    InvalidSegment,
    SpecialSegment,
    TextSegment,
    UnexpectedToken,
    UnterminatedSegment,
    WrongCodeCount,
    WrongModality,
)
from omnitok.tokenizers.patterns import FlattenPattern
from omnitok.tokenizers.vocab import DEFAULT_SPECIALS, AudioSpec, Modality, Vocab, VocabError

STRUCTURAL = {"<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>"}
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?" + "".join(map(chr, range(0x3b1, 0x3c9)))


class CharText:
    """Fake text tokenizer: one id per character of a fixed alphabet (bijective)."""

    def __init__(self, size: int) -> None:
        self.alphabet, self.vocab_size = ALPHABET[:size], size

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in ids)


class ByteText:
    """Fake text tokenizer: one id per UTF-8 byte."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def audio_spec(n_q: int, codebook_size: int) -> AudioSpec:
    return AudioSpec(codebook_size=codebook_size, n_q=n_q, sample_rate=24000, frame_rate=75.0)


def rand_codes(shape: tuple[int, int], high: int, seed: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ---- strategies ---------------------------------------------------------------------------
@st.composite
def vocabs(draw) -> Vocab:
    extra = draw(st.sampled_from([(), ("<sep>",), ("<sep>", "<task>")]))
    audio = draw(st.none() | st.builds(audio_spec, st.integers(1, 4), st.integers(1, 20)))
    return Vocab(text_size=draw(st.integers(1, len(ALPHABET))),
                 image_size=draw(st.integers(0, 30)), audio=audio,
                 specials=tuple(draw(st.permutations(DEFAULT_SPECIALS + extra))),
                 max_grid=draw(st.integers(1, 6)), pad_to=draw(st.sampled_from([1, 8, 64])))


@st.composite
def segments(draw, vocab: Vocab):
    kinds = ["text", "special"] + ["image"] * bool(vocab.image_size)
    kinds += ["audio"] * bool(vocab.audio)
    kind, seed = draw(st.sampled_from(kinds)), draw(st.integers(0, 2**31 - 1))
    if kind == "text":
        return TextSegment(draw(st.text(ALPHABET[:vocab.text_size], max_size=8)))
    if kind == "special":
        return SpecialSegment(draw(st.sampled_from(sorted(set(vocab.specials) - STRUCTURAL))))
    if kind == "image":
        side = st.integers(1, vocab.max_grid)
        return ImageSegment(rand_codes((draw(side), draw(side)), vocab.image_size, seed))
    t = draw(st.integers(0, 5))
    return AudioSegment(rand_codes((vocab.audio.n_q, t), vocab.audio.codebook_size, seed))


@st.composite
def cases(draw) -> tuple[Vocab, Document]:
    vocab = draw(vocabs())
    return vocab, Document(draw(st.lists(segments(vocab), max_size=6)))


MODALITY = {TextSegment: Modality.TEXT, SpecialSegment: Modality.SPECIAL,
            ImageSegment: Modality.IMAGE, AudioSegment: Modality.AUDIO}


def expected_layout(doc: Document, text: CharText) -> tuple[list, list]:
    """Independent of the codec: range name of every id and (modality, start, stop) spans."""
    names, spans = ["special"], []  # <bos>
    for seg in doc.normalized():
        start = len(names)
        if isinstance(seg, TextSegment):
            names += ["text"] * len(text.encode(seg.text))
        elif isinstance(seg, SpecialSegment):
            names.append("special")
        elif isinstance(seg, ImageSegment):
            names += ["special", "grid", "grid"] + ["image"] * seg.codes.numel() + ["special"]
        else:
            k, t = seg.codes.shape
            names += ["special"] + [f"audio_{s % k}" for s in range(t * k)] + ["special"]
        spans.append((MODALITY[type(seg)], start, len(names)))
    return names + ["special"], spans  # <eos>


# ---- round trips --------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(cases(), st.booleans(), st.booleans())
def test_round_trip(case, bos, eos):
    vocab, doc = case
    codec = DocumentCodec(vocab, CharText(vocab.text_size))
    ids = codec.encode(doc, bos=bos, eos=eos)
    assert all(isinstance(i, int) for i in ids)
    assert codec.decode(ids) == doc.normalized()
    assert codec.decode(torch.tensor(ids, dtype=torch.long)) == doc.normalized()
    assert codec.decode(ids, strict=False) == doc.normalized()
    assert codec.encode(codec.decode(ids), bos=bos, eos=eos) == ids


@settings(max_examples=150, deadline=None)
@given(cases())
def test_every_position_carries_its_modality(case):
    vocab, doc = case
    text = CharText(vocab.text_size)
    codec = DocumentCodec(vocab, text)
    ids = codec.encode(doc)
    names, spans = expected_layout(doc, text)
    assert [vocab.locate(i).name for i in ids] == names
    assert [vocab.modality_of(i) for i in ids] == [vocab.range(n).modality for n in names]
    assert codec.segment_spans(ids) == spans
    for (modality, start, stop), seg in zip(spans, doc.normalized()):
        if modality == Modality.IMAGE:
            h, w = seg.codes.shape
            assert ids[start:start + 3] == [vocab.special("<boi>"), vocab.grid(h), vocab.grid(w)]
            assert ids[start + 3:stop - 1] == [vocab.range("image").start + int(c)
                                               for c in seg.codes.flatten()]  # raster order
            assert ids[stop - 1] == vocab.special("<eoi>")
        if modality == Modality.AUDIO:
            k, t = seg.codes.shape
            assert ids[start + 1:stop - 1] == [vocab.range("audio", j).start + int(seg.codes[j, i])
                                               for i in range(t) for j in range(k)]
            assert (ids[start], ids[stop - 1]) == (vocab.special("<boa>"), vocab.special("<eoa>"))


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_mutated_streams_decode_exactly_or_raise_document_error(case, data):
    vocab, doc = case
    codec = DocumentCodec(vocab, CharText(vocab.text_size))
    ids = codec.encode(doc, bos=data.draw(st.booleans()), eos=data.draw(st.booleans()))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(ids)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        new = [data.draw(st.integers(0, vocab.size - 1))] if op != "delete" else []
        ids = ids[:pos] + new + ids[pos + (op != "insert"):]
    try:
        decoded = codec.decode(ids)
    except DocumentError as e:
        position = int(re.match(r"position (\d+): ", str(e)).group(1))
        assert 0 <= position <= len(ids)
        return
    bos, eos = ids[:1] == [vocab.special("<bos>")], ids[-1:] == [vocab.special("<eos>")]
    assert codec.encode(decoded, bos=bos, eos=eos) == ids


def test_unicode_round_trip_with_byte_tokenizer():
    vocab = Vocab(text_size=256, image_size=4, max_grid=2)
    codec = DocumentCodec(vocab, ByteText())
    doc = Document([TextSegment("héllo "), TextSegment("wörld ✓"), SpecialSegment("<uncond>"),
                    ImageSegment(torch.tensor([[0, 3]])), TextSegment(""), TextSegment("日本")])
    assert codec.decode(codec.encode(doc)) == doc.normalized()
    assert len(doc.normalized()) == 4


@pytest.mark.parametrize("ids", [[], ["<bos>"], ["<eos>"], ["<bos>", "<eos>"]])
def test_empty_streams(ids):
    vocab = Vocab(text_size=4)
    assert DocumentCodec(vocab).decode([vocab.special(s) for s in ids]) == Document([])


# ---- malformed streams --------------------------------------------------------------------
VOCAB = Vocab(text_size=256, image_size=10, audio=audio_spec(3, 5), max_grid=4,
              specials=DEFAULT_SPECIALS + ("<sep>",))
CODEC = DocumentCodec(VOCAB, ByteText())
DOC = Document([TextSegment("hi"), SpecialSegment("<uncond>"),
                ImageSegment(rand_codes((2, 3), 10, 0)), TextSegment("a"),
                AudioSegment(rand_codes((3, 2), 5, 1)), SpecialSegment("<sep>"), TextSegment("z")])
IDS = CODEC.encode(DOC)
BOI, EOI = IDS.index(VOCAB.special("<boi>")), IDS.index(VOCAB.special("<eoi>"))
BOA, EOA = IDS.index(VOCAB.special("<boa>")), IDS.index(VOCAB.special("<eoa>"))
SP = {s: VOCAB.special(s) for s in VOCAB.specials}
TEXT_ID, IMAGE_ID = VOCAB.to_global("text", 65), VOCAB.to_global("image", 1)
AUDIO_ID = [VOCAB.to_global("audio", 0, level=k) for k in range(3)]


def expect(error: type, ids, position: int, **kw) -> None:
    with pytest.raises(error, match=rf"^position {position}: ") as info:
        CODEC.decode(ids, **kw)
    assert type(info.value) is error


def replace(pos: int, token_id: int) -> list[int]:
    return IDS[:pos] + [token_id] + IDS[pos + 1:]


def test_fixture_layout():
    assert (BOI, EOI, BOA, EOA) == (4, 13, 15, 22) and len(IDS) == 26
    assert CODEC.decode(IDS) == DOC.normalized() == DOC


@pytest.mark.parametrize("cut", [*range(BOI, EOI), *range(BOA, EOA)])
@pytest.mark.parametrize("then_eos", [False, True])
def test_truncated_segment(cut, then_eos):
    expect(UnterminatedSegment, IDS[:cut + 1] + [SP["<eos>"]] * then_eos, cut + 1)


@pytest.mark.parametrize("pos", range(BOI + 3, EOI))
def test_image_one_code_missing_or_extra(pos):
    expect(WrongCodeCount, IDS[:pos] + IDS[pos + 1:], EOI - 1)
    expect(WrongCodeCount, IDS[:pos] + [IMAGE_ID] + IDS[pos:], EOI)


def test_audio_partial_frame():
    expect(WrongCodeCount, IDS[:EOA - 1] + IDS[EOA:], EOA - 1)
    expect(WrongCodeCount, IDS[:EOA] + [AUDIO_ID[0]] + IDS[EOA:], EOA + 1)
    expect(WrongCodeCount, IDS[:EOA] + AUDIO_ID[:2] + IDS[EOA:], EOA + 2)


@pytest.mark.parametrize("pos", range(BOA + 1, EOA - 1))
def test_audio_code_removed_shifts_levels(pos):
    expect(WrongModality, IDS[:pos] + IDS[pos + 1:], pos)


@pytest.mark.parametrize("pos", range(BOI + 3, EOI))
def test_wrong_token_inside_image(pos):
    for token_id in (TEXT_ID, *AUDIO_ID):
        expect(WrongModality, replace(pos, token_id), pos)
    for name in ("<pad>", "<bos>", "<boi>", "<boa>", "<eoa>", "<uncond>"):
        expect(UnexpectedToken, replace(pos, SP[name]), pos)
    expect(UnexpectedToken, replace(pos, VOCAB.grid(2)), pos)
    expect(WrongCodeCount, replace(pos, SP["<eoi>"]), pos)
    expect(UnterminatedSegment, replace(pos, SP["<eos>"]), pos)


@pytest.mark.parametrize("pos", range(BOA + 1, EOA))
def test_wrong_token_inside_audio(pos):
    level = (pos - BOA - 1) % 3
    for token_id in (TEXT_ID, IMAGE_ID, AUDIO_ID[(level + 1) % 3], AUDIO_ID[(level + 2) % 3]):
        expect(WrongModality, replace(pos, token_id), pos)
    for name in ("<pad>", "<bos>", "<boi>", "<eoi>", "<boa>", "<sep>"):
        expect(UnexpectedToken, replace(pos, SP[name]), pos)
    expect(UnterminatedSegment, replace(pos, SP["<eos>"]), pos)
    if level:
        expect(WrongCodeCount, replace(pos, SP["<eoa>"]), pos)


@pytest.mark.parametrize("pos", [BOI + 1, BOI + 2])
@pytest.mark.parametrize("name", ["text", "image", "audio", "<eoi>", "<pad>", "<boi>"])
def test_bad_header(pos, name):
    token_id = {"text": TEXT_ID, "image": IMAGE_ID, "audio": AUDIO_ID[0]}.get(name)
    expect(BadHeader, replace(pos, SP[name] if token_id is None else token_id), pos)


def test_header_too_small_or_large_for_body():
    expect(WrongCodeCount, replace(BOI + 2, VOCAB.grid(4)), EOI)  # 2x4 needs 8, has 6
    expect(WrongCodeCount, replace(BOI + 2, VOCAB.grid(2)), EOI - 2)  # 2x2 needs 4


@pytest.mark.parametrize("pos", [1, 2, 3, EOI + 1, EOA + 1, EOA + 2])  # text, specials
def test_misplaced_tokens_at_top_level(pos):
    for token_id in (IMAGE_ID, *AUDIO_ID):
        expect(WrongModality, replace(pos, token_id), pos)
    for name in ("<pad>", "<bos>", "<eoi>", "<eoa>"):
        expect(UnexpectedToken, replace(pos, SP[name]), pos)
    expect(UnexpectedToken, replace(pos, VOCAB.grid(1)), pos)


def test_after_eos():
    for tail in ([TEXT_ID], [SP["<pad>"]] * 3, [SP["<eos>"]], IDS):
        expect(UnexpectedToken, IDS + tail, len(IDS))
        assert CODEC.decode(IDS + tail, strict=False) == DOC
    assert CODEC.decode(IDS[:3] + [SP["<eos>"]] + IDS[3:], strict=False) == Document(
        [TextSegment("hi")])


def test_bos_only_at_position_zero():
    expect(UnexpectedToken, [SP["<bos>"]] + IDS, 1)
    assert CODEC.decode(IDS[1:]) == DOC


@pytest.mark.parametrize("bad", [-1, VOCAB.size, VOCAB.padded_size - 1, 10**30])
@pytest.mark.parametrize("pos", [0, 5, 16, 25])
def test_ids_outside_vocabulary(bad, pos):
    assert VOCAB.size < VOCAB.padded_size
    expect(InvalidId, replace(pos, bad), pos)
    with pytest.raises(VocabError, match=f"position {pos}: id {bad} is outside"):
        CODEC.decode(replace(pos, bad))
    if abs(bad) < 2**62:
        with pytest.raises(InvalidId, match=f"position {pos}"):
            CODEC.decode(torch.tensor(replace(pos, bad)))


def test_non_integer_ids():
    expect(InvalidId, replace(3, 1.5), 3)
    expect(InvalidId, replace(3, "a"), 3)
    with pytest.raises(InvalidId, match="integers"):
        CODEC.decode(torch.tensor(IDS, dtype=torch.float32))
    with pytest.raises(InvalidId, match="1-D"):
        CODEC.decode(torch.tensor([IDS]))
    assert CODEC.decode(torch.tensor(IDS, dtype=torch.int32)) == DOC
    assert CODEC.decode(torch.tensor([])) == Document([])


def test_text_ids_need_a_text_tokenizer():
    codec = DocumentCodec(VOCAB)
    with pytest.raises(DocumentError, match="^position 1: text ids but the codec has no text"):
        codec.decode(IDS)
    assert codec.decode(IDS[BOI:EOI + 1] + IDS[BOA:EOA + 1]) == Document(DOC.segments[2:5:2])
    assert codec.segment_spans(IDS)[0] == (Modality.TEXT, 1, 3)


def test_text_ids_beyond_a_smaller_tokenizer():
    codec = DocumentCodec(Vocab(text_size=300), ByteText())
    with pytest.raises(InvalidId, match="^position 2: text id 299"):
        codec.decode([codec.vocab.to_global("text", i) for i in (3, 5, 299)])


def test_segments_the_vocabulary_lacks():
    vocab = Vocab(text_size=3)
    codec = DocumentCodec(vocab)
    for name in ("<boi>", "<boa>"):
        with pytest.raises(UnexpectedToken, match="^position 0: .* has no"):
            codec.decode([vocab.special(name)])


# ---- encode errors ------------------------------------------------------------------------
@pytest.mark.parametrize("segment, match", [
    (ImageSegment(torch.zeros(0, 2, dtype=torch.long)), "empty image"),
    (ImageSegment(torch.zeros(2, 0, dtype=torch.long)), "empty image"),
    (ImageSegment(torch.zeros(5, 1, dtype=torch.long)), "grid side 5"),
    (ImageSegment(torch.zeros(4, dtype=torch.long)), "2-D"),
    (ImageSegment(torch.zeros(1, 1, 1, dtype=torch.long)), "2-D"),
    (ImageSegment(torch.zeros(1, 1)), "integer"),
    (ImageSegment(torch.tensor([[0, 10]])), "image ids must lie in"),
    (ImageSegment(torch.tensor([[-1]])), "image ids must lie in"),
    (AudioSegment(torch.zeros(2, 3, dtype=torch.long)), r"shape \(K=3"),
    (AudioSegment(torch.tensor([[0], [5], [0]])), "outside"),
    (AudioSegment(torch.zeros(3, 1)), "integer"),
    (SpecialSegment("<eoi>"), "structural"),
    (SpecialSegment("<nope>"), "unknown special"),
    (TextSegment(b"bytes"), "str"),
    ("a string", "not a segment"),
])
def test_encode_rejects(segment, match):
    doc = Document([TextSegment("ok"), segment])
    with pytest.raises(InvalidSegment, match=f"^segment 1 .*{match}"):
        CODEC.encode(doc)


def test_encode_rejects_modalities_the_vocab_lacks():
    codec = DocumentCodec(Vocab(text_size=3))
    with pytest.raises(InvalidSegment, match="^segment 0 .*no 'image' range"):
        codec.encode(Document([ImageSegment(torch.zeros(1, 1, dtype=torch.long))]))
    with pytest.raises(InvalidSegment, match="^segment 1 .*no audio"):
        codec.encode(Document([TextSegment(""), AudioSegment(torch.zeros(1, 1).long())]))
    with pytest.raises(InvalidSegment, match="^segment 0 .*no text tokenizer"):
        codec.encode(Document([TextSegment("x")]))
    assert codec.encode(Document([TextSegment("")]), bos=False) == [codec.vocab.special("<eos>")]


def test_codec_configuration_errors():
    with pytest.raises(VocabError, match="does not fit"):
        DocumentCodec(VOCAB, pattern=FlattenPattern(2))
    with pytest.raises(VocabError, match="does not fit"):
        DocumentCodec(Vocab(text_size=3), pattern=FlattenPattern(1))
    with pytest.raises(VocabError, match="256 ids"):
        DocumentCodec(Vocab(text_size=100), ByteText())
    assert DocumentCodec(VOCAB, pattern=FlattenPattern(3)).pattern == FlattenPattern(3)


# ---- documents ----------------------------------------------------------------------------
def test_document_equality_and_normalisation():
    img = torch.arange(6).view(2, 3)
    assert ImageSegment(img) == ImageSegment(img.clone().int()) == ImageSegment(img.tolist())
    assert ImageSegment(img) != ImageSegment(img.view(3, 2))
    assert ImageSegment(img) != AudioSegment(img)
    assert AudioSegment(torch.zeros(2, 0)) == AudioSegment(torch.zeros(2, 0, dtype=torch.long))
    doc = Document([TextSegment("a"), TextSegment(""), TextSegment("b"), ImageSegment(img),
                    TextSegment(""), SpecialSegment("<uncond>"), TextSegment("c")])
    assert len(doc) == 7 and list(doc) == doc.segments and doc[3] == ImageSegment(img)
    assert doc.normalized() == Document([TextSegment("ab"), ImageSegment(img),
                                         SpecialSegment("<uncond>"), TextSegment("c")])
    assert doc != doc.normalized() and Document() == Document([])


def test_error_hierarchy():
    for cls in (InvalidSegment, InvalidId, UnterminatedSegment, WrongCodeCount, WrongModality,
                BadHeader, UnexpectedToken):
        assert issubclass(cls, DocumentError)
    assert issubclass(DocumentError, OmnitokError) and issubclass(DocumentError, ValueError)
    assert issubclass(InvalidId, VocabError)


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (4, 1), (2, 3), (4, 4)])
@pytest.mark.parametrize("frames", [0, 1, 3])
def test_round_trip_edge_shapes(shape, frames):
    doc = Document([ImageSegment(rand_codes(shape, 10, 3)),
                    AudioSegment(rand_codes((3, frames), 5, 4)),
                    ImageSegment(rand_codes(shape[::-1], 10, 5)), TextSegment("end")])
    ids = CODEC.encode(doc, bos=False)
    assert CODEC.decode(ids) == doc
    assert [m for m, _, _ in CODEC.segment_spans(ids)] == [
        Modality.IMAGE, Modality.AUDIO, Modality.IMAGE, Modality.TEXT]


def test_round_trip_with_the_sentencepiece_tokenizer(text_tokenizer):
    """Real BPE pieces: adjacent text segments, text after images/audio, odd whitespace."""
    vocab = Vocab(text_size=text_tokenizer.vocab_size, image_size=16,
                  audio=AudioSpec(codebook_size=8, n_q=3, sample_rate=16000, frame_rate=50))
    codec = DocumentCodec(vocab, text_tokenizer)
    doc = Document([TextSegment("a red"), TextSegment(" circle"), TextSegment("on  a\nblue "),
                    ImageSegment(torch.randint(0, 16, (3, 5))), TextSegment(" says hello"),
                    AudioSegment(torch.randint(0, 8, (3, 7))), SpecialSegment("<uncond>"),
                    TextSegment("Ωmega ▁ end")])
    ids = codec.encode(doc)
    assert codec.decode(ids) == doc.normalized()
    assert codec.decode(torch.tensor(ids)) == doc.normalized()
    merged = codec.encode(Document([TextSegment("a red circle")]))
    assert codec.encode(Document([TextSegment("a red"), TextSegment(" circle")])) == merged
