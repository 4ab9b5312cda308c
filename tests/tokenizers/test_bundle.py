"""Tokenizer folders: media files -> codes -> files, documents from files, the CLI and eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnitok.cli import main
from omnitok.demo.world import build_world
from omnitok.tokenizers.audio import load_audio
from omnitok.tokenizers.bundle import BundleError, TokenizerBundle
from omnitok.tokenizers.document import AudioSegment, ImageSegment, TextSegment
from omnitok.tokenizers.image import load_image

from ..conftest import tiny_media_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, n_train=8, n_heldout=4, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory, text_tokenizer):
    bundle = tiny_media_bundle(text_tokenizer)
    folder = tmp_path_factory.mktemp("tok")
    bundle.save(folder)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bundle_round_trips_documents(tok, world, tmp_path):
    bundle = TokenizerBundle.load(tok)
    assert bundle.vocab.image_size == 64 and bundle.vocab.audio.n_q == 2
    image = sorted((world / "images").glob("*.png"))[0]
    wav = sorted((world / "audio").glob("*.wav"))[0]
    doc = bundle.document([("text", "a red circle"), ("image", image), ("audio", wav)])
    assert isinstance(doc[1], ImageSegment) and doc[1].codes.shape == (8, 8)
    frames = -(-load_audio(wav, 16000, 1).shape[-1] // 32)
    assert isinstance(doc[2], AudioSegment) and doc[2].codes.shape == (2, frames)
    codec = bundle.codec()
    assert codec.decode(codec.encode(doc)) == doc
    paths = bundle.write_document(doc, tmp_path / "out", "doc")
    assert [p.suffix for p in paths] == [".txt", ".png", ".wav"]
    assert load_image(paths[1], 32).shape == (3, 32, 32)
    assert isinstance(doc[0], TextSegment) and paths[0].read_text() == "a red circle\n"


def test_encode_decode_roundtrip_commands(capsys, tok, world, tmp_path):
    image = sorted((world / "images").glob("*.png"))[0]
    code, out, err = run(capsys, "tokenizer", "encode", tok, image, "--out", tmp_path / "c.npy")
    assert code == 0, err
    codes = np.load(tmp_path / "c.npy")
    assert codes.shape == (8, 8) and codes.max() < 64
    code, _, err = run(capsys, "tokenizer", "decode", tok, tmp_path / "c.npy", "-o",
                       tmp_path / "x.png")
    assert code == 0, err
    expected = TokenizerBundle.load(tok).image.decode(torch.from_numpy(codes)[None])[0]
    assert torch.allclose(load_image(tmp_path / "x.png", 32), expected, atol=1 / 255 + 1e-6)
    wav = sorted((world / "audio").glob("*.wav"))[0]
    code, _, err = run(capsys, "tokenizer", "roundtrip", tok, wav, "-o", tmp_path / "r.wav")
    assert code == 0, err
    assert load_audio(tmp_path / "r.wav", 16000, 1).shape[-1] >= load_audio(wav, 16000, 1).shape[-1]


def test_bad_media_give_one_line(capsys, tok, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = run(capsys, "tokenizer", "encode", tok, tmp_path / "bad.png")
    assert code == 1 and err.count("\n") == 1 and "bad.png" in err
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = run(capsys, "tokenizer", "encode", tok, tmp_path / "notes.txt")
    assert code == 1 and "unknown media type" in err
    np.save(tmp_path / "f.npy", np.zeros((2, 2), dtype=np.float32))
    code, _, err = run(capsys, "tokenizer", "decode", tok, tmp_path / "f.npy", "-o",
                       tmp_path / "y.png")
    assert code == 1 and "integer" in err
    np.save(tmp_path / "big.npy", np.full((2, 2), 10_000))
    code, _, err = run(capsys, "tokenizer", "decode", tok, tmp_path / "big.npy", "-o",
                       tmp_path / "y.png")
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "y.png").exists()
    np.save(tmp_path / "img.npy", np.zeros((8, 8), dtype=np.int64))
    code, _, err = run(capsys, "tokenizer", "decode", tok, tmp_path / "img.npy", "-o",
                       tmp_path / "y.wav")  # 2-D codes of the wrong shape for audio
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "y.wav").exists()


def test_mismatched_vocabulary_is_refused(tok, text_tokenizer):
    bundle = TokenizerBundle.load(tok)
    with pytest.raises(BundleError, match="image range holds"):
        TokenizerBundle(bundle.vocab.__class__(text_size=text_tokenizer.vocab_size,
                                               image_size=10), text_tokenizer, bundle.image)


def test_eval_with_judges(capsys, tok, world, tmp_path):
    code, out, err = run(capsys, "tokenizer", "eval", tok, "--data", world / "heldout.jsonl",
                         "--out", tmp_path / "eval.json")
    assert code == 0, err
    assert "image  4 images" in out and "audio  4 clips" in out
    assert "image  judge: originals 100.0%" in out and "audio  judge: originals 100.0%" in out
    assert (tmp_path / "eval.json").exists()
