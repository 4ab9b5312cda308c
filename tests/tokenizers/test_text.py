"""The text tokenizer: training, round trips, byte fallback, corpus reading, errors."""

from __future__ import annotations

import json
import pickle
import random
import re

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omnitok import OmnitokError
from omnitok.tokenizers.text import TextTokenizer, TextTokenizerError, iter_texts

WORDS = (
    "the of and model token image audio text vocabulary decoder transformer sampling training "
    "corpus codec frame level grid pixel sound voice music language attention layer weight "
    "batch sequence window cache kernel tensor shape value query key head block residual norm "
    "café naïve über 東京 日本語 2024 forty seven"
).split()
UNSEEN = "Ω"  # appears only in image/audio paths and malformed lines of the manifest
HYPO = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def _write_corpus(folder, seed: int = 0) -> list:
    """A JSONL manifest (texts between image/audio segments, 3 malformed lines) and a .txt file."""
    folder.mkdir(parents=True, exist_ok=True)
    sents = _sentences(500, seed)
    lines = []
    for i in range(0, 300, 3):
        segs = [
            {"text": sents[i]},
            {"image": f"{UNSEEN}{i}.png"},
            {"text": sents[i + 1]},
            {"audio": f"{UNSEEN}.wav"},
        ]
        lines.append(json.dumps({"segments": segs} if i % 2 else segs, ensure_ascii=False))
        lines.append(json.dumps([{"text": sents[i + 2] + "\n"}], ensure_ascii=False))
    lines += ['{"segments": [{"text": "Ω bad"', json.dumps([{"text": "Ω"}, {"text": 3}]), '"Ω"']
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "plain.txt").write_text("\n".join(sents[300:]) + "\n", encoding="utf-8")
    return [folder / "docs.jsonl", folder / "plain.txt"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list:
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tok(corpus) -> TextTokenizer:
    return TextTokenizer.train(corpus, vocab_size=500, progress=False)


def _drain(gen) -> tuple[list[str], int]:
    out = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return out, stop.value


# ---- corpus reading -------------------------------------------------------------------------


def test_iter_texts_jsonl_uses_only_text_segments_and_counts_malformed(tmp_path):
    path = tmp_path / "m.jsonl"
    good = [
        json.dumps({"segments": [{"text": "a b"}, {"image": "x.png"}, {"text": "c\nd"}], "id": 1}),
        json.dumps([{"audio": "y.wav"}, {"text": " lead"}, {"text": ""}]),
        "",
        json.dumps({"segments": []}),
    ]
    bad = [
        "{not json",
        json.dumps({"text": "no segments key"}),
        json.dumps({"segments": "not a list"}),
        json.dumps({"segments": [{"text": "ok"}, "not a dict"]}),
        json.dumps([{"text": "ok"}, {"text": 5}]),
        json.dumps([{"text": None}]),
        json.dumps(42),
    ]
    raw = "\n".join(good[:2] + bad[:4] + good[2:] + bad[4:]).encode() + b"\n\xff\xfe\n"
    path.write_bytes(raw)
    texts, skipped = _drain(iter_texts(path))
    assert texts == ["a b", "c\nd", " lead"]
    assert skipped == len(bad) + 1  # + the line that is not UTF-8


def test_iter_texts_plain_yields_nonempty_lines_verbatim(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"  two lead\r\n\n   \nend  \t\nlast")
    assert _drain(iter_texts(path)) == (["  two lead", "   ", "end  \t", "last"], 0)
    path.write_bytes(b"fine\n\xff bad\n")
    with pytest.raises(TextTokenizerError, match=re.escape(f"{path}:2")):
        list(iter_texts(path))


# ---- round trips ----------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "  ",
    "\n",
    " \n ",
    "\t",
    "\r\n",
    "\x00",
    "▁",
    " ▁",
    "▁ ",
    "▁▁",
    "a▁b",
    "the▁model",
    "😀",
    "👩‍👩‍👧",
    "東京",
    "日本語",
    "Ω",
    "x\u0301",
    "\ufeff",
    "\u200b",
    "<unk>",
    "<0x41>",
    "2024",
    "the",
    "ⅷ",
    "ﬁ",
]


@HYPO
@given(st.text())
@example("  the  model \n\n ▁ 😀 東京\t ")
def test_round_trip_arbitrary_text(tok, s):
    assert tok.decode(tok.encode(s)) == s


@HYPO
@given(st.lists(st.sampled_from(TRICKY + WORDS), max_size=12).map("".join))
def test_round_trip_tricky_fragments(tok, s):
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


def test_literal_visible_space_is_not_a_space(tok):
    assert tok.encode("the▁model") != tok.encode("the model")
    assert tok.decode(tok.encode("the▁model")) == "the▁model"


def test_encode_batch_matches_encode(tok):
    texts = ["the model", "", "a▁b", " 😀 ", *_sentences(20, 9)]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def test_byte_fallback_for_unseen_character(tok):
    # UNSEEN appears only in image paths and malformed lines: training must not have seen it.
    ids = tok.encode(UNSEEN)
    pieces = [tok.id_to_piece(i) for i in ids]
    byte_pieces = [f"<0x{b:02X}>" for b in UNSEEN.encode("utf-8")]
    assert pieces[-len(byte_pieces) :] == byte_pieces
    assert "".join(pieces[: -len(byte_pieces)]) in ("", "▁")
    assert tok.decode(ids) == UNSEEN


def test_common_words_become_single_pieces(tok):
    common = ["the", "model", "token", "transformer", "vocabulary", "attention"]
    assert [len(tok.encode(w)) for w in common] == [1] * len(common)
    assert [tok.id_to_piece(tok.encode(w)[0]) for w in common] == ["▁" + w for w in common]
    text = " ".join(_sentences(50, 123))
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 3


def test_vocab_has_no_bos_eos_and_byte_pieces(tok):
    assert tok.vocab_size == 500
    assert tok.id_to_piece(0) == "<unk>"
    assert [tok.id_to_piece(i) for i in (1, 256)] == ["<0x00>", "<0xFF>"]
    assert "<s>" not in {tok.id_to_piece(i) for i in range(tok.vocab_size)}


# ---- persistence ----------------------------------------------------------------------------


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / TextTokenizer.FILENAME
    assert sorted(p.name for p in path.parent.iterdir()) == [TextTokenizer.FILENAME]
    texts = _sentences(30, 5) + TRICKY
    copies = (
        TextTokenizer.load(path),
        TextTokenizer.load(path.parent),
        pickle.loads(pickle.dumps(tok)),
    )
    for loaded in copies:
        assert loaded.model_proto == tok.model_proto
        assert loaded.encode_batch(texts) == tok.encode_batch(texts)


def test_load_foreign_sentencepiece_model_adds_no_bos_eos(corpus, tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    sents = _sentences(500, 0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=60,
        hard_vocab_limit=False,
        minloglevel=4,
    )
    ref = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert (ref.bos_id(), ref.eos_id()) == (1, 2)
    foreign = TextTokenizer.load(folder)
    assert foreign.vocab_size == ref.vocab_size()
    for s in sents[:20] + ["hello  world", " the model "]:
        ids = foreign.encode(s)
        assert ids == ref.encode(s)
        assert ids and ids[0] != 1 and ids[-1] != 2
        assert foreign.decode(ids) == ref.decode(ids)


# ---- errors ---------------------------------------------------------------------------------


def test_training_errors(corpus, tmp_path):
    empty = [tmp_path / "e.txt", tmp_path / "e.jsonl"]
    empty[0].write_text("\n\n", encoding="utf-8")
    empty[1].write_text(json.dumps([{"image": "a.png"}]) + "\n", encoding="utf-8")
    with pytest.raises(TextTokenizerError, match=r"no text found in .*e\.txt.*e\.jsonl"):
        TextTokenizer.train(empty, vocab_size=300, progress=False)
    missing = tmp_path / "nope.txt"
    with pytest.raises(TextTokenizerError, match=re.escape(str(missing))):
        TextTokenizer.train([corpus[0], missing], vocab_size=300, progress=False)
    with pytest.raises(TextTokenizerError, match="at least 258"):
        TextTokenizer.train(corpus, vocab_size=100, progress=False)
    with pytest.raises(TextTokenizerError, match=r"character_coverage must be in \[0.98, 1.0\]"):
        TextTokenizer.train(corpus, vocab_size=300, character_coverage=0.5, progress=False)
    with pytest.raises(TextTokenizerError, match=r"too small for this corpus: at least \d+"):
        TextTokenizer.train(corpus, vocab_size=260, progress=False)


def test_vocab_too_large_keeps_suggested_maximum(corpus):
    with pytest.raises(
        TextTokenizerError, match=r"vocab_size 8000 is too large .* at most (\d+)"
    ) as err:
        TextTokenizer.train(corpus, progress=False)
    assert "\n" not in str(err.value) and isinstance(err.value, OmnitokError)
    limit = int(re.search(r"at most (\d+)", str(err.value))[1])
    assert 500 < limit < 8000
    assert TextTokenizer.train(corpus, vocab_size=limit, progress=False).vocab_size == limit


@pytest.mark.parametrize("content", ["random", "truncated", "empty", "text"])
def test_load_corrupt_model_names_the_file(tok, tmp_path, content):
    data = {
        "random": random.Random(0).randbytes(4096),
        "truncated": tok.model_proto[: len(tok.model_proto) // 2],
        "empty": b"",
        "text": b"the model\n",
    }[content]
    path = tmp_path / "bad.model"
    path.write_bytes(data)
    with pytest.raises(
        TextTokenizerError, match=re.escape(str(path)) + ".*not a sentencepiece model"
    ):
        TextTokenizer.load(path)


def test_load_missing(tmp_path):
    with pytest.raises(TextTokenizerError, match=re.escape(str(tmp_path / "x.model"))):
        TextTokenizer.load(tmp_path / "x.model")
    with pytest.raises(TextTokenizerError, match="no text.model or tokenizer.model"):
        TextTokenizer.load(tmp_path)


def test_out_of_range_ids(tok):
    for bad in (tok.vocab_size, -1, 10**9):
        with pytest.raises(TextTokenizerError, match=f"id {bad} out of range"):
            tok.decode([5, bad])
        with pytest.raises(TextTokenizerError, match="out of range"):
            tok.id_to_piece(bad)


def test_long_texts_are_cut_not_dropped(corpus, tmp_path):
    # sentencepiece silently skips sentences over max_sentence_length bytes; this one is 120 KB
    long = tmp_path / "long.txt"
    long.write_text("Жук " * 30_000 + "\n", encoding="utf-8")
    tok = TextTokenizer.train([corpus[1], long], vocab_size=400, progress=False)
    assert [tok.id_to_piece(i) for i in tok.encode("Жук")] == ["▁Жук"]


# ---- determinism and console ----------------------------------------------------------------


def test_training_is_deterministic(corpus, tok, tmp_path):
    assert (
        TextTokenizer.train(corpus, vocab_size=500, progress=False).model_proto == tok.model_proto
    )
    other = _write_corpus(tmp_path / "other", seed=1)
    assert TextTokenizer.train(other, vocab_size=500, progress=False).model_proto != tok.model_proto


def test_progress_goes_to_stderr_only(corpus, capfd):
    TextTokenizer.train(corpus, vocab_size=400, max_sentences=100, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert re.search(r"400 pieces from 100 of 500 sentences, 3 malformed lines skipped", err)
    TextTokenizer.train(corpus, vocab_size=400, progress=False)
    assert capfd.readouterr() == ("", "")
