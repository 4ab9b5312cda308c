"""The caption reader: its scores against a float64 GRU written out by hand, padding that
does not change a caption's score, learning a caption that only the layout of the codes
tells, save/load checked against the tokenizers, `omnitok reader train`, and --rerank
picking images by the reader (the model reading back without one)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from omnitok.cli import main
from omnitok.generate.generator import ROUND_SEEDS, GenerationSettings, Generator
from omnitok.model.checkpoint import load_checkpoint
from omnitok.model.reader import (
    READER_DIR,
    CaptionReader,
    ReaderConfig,
    ReaderError,
    fingerprint,
    fit,
    load_reader,
    save_reader,
)
from omnitok.tokenizers.document import Document, TextSegment

from ..generate.conftest import tiny_bundle, tiny_checkpoint


def small_reader(codebook: torch.Tensor, text_vocab: int = 20, seed: int = 0) -> CaptionReader:
    torch.manual_seed(seed)
    config = ReaderConfig(text_vocab=text_vocab, codebook_size=codebook.shape[0],
                          code_dim=codebook.shape[1], width=12, hidden=10)
    return CaptionReader(config, codebook).eval()


def float64_score(reader: CaptionReader, codes: torch.Tensor, caption: list[int]) -> float:
    """log p(caption + <eos> | codes): the convolutions, then the GRU's equations by hand."""
    r = reader.double()
    with torch.no_grad():
        summary = r.grid(r.codebooks[0][codes][None])[0]
        h = torch.tanh(r.start(summary))
        feed = r.feed(summary)
        g = r.gru
        total = 0.0
        for x, y in zip([r.config.bos, *caption], [*caption, r.config.eos]):
            v = r.embed.weight[x] + feed
            gi, gh = g.weight_ih_l0 @ v + g.bias_ih_l0, g.weight_hh_l0 @ h + g.bias_hh_l0
            (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3), gh.chunk(3)
            reset, update = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - update) * torch.tanh(i_n + reset * hn) + update * h
            total += torch.log_softmax(r.out(h), -1)[y].item()
    reader.float()
    return total


def test_scores_equal_a_float64_gru_and_ignore_padding():
    g = torch.Generator().manual_seed(1)
    reader = small_reader(torch.randn(16, 3, generator=g))
    codes = torch.randint(0, 16, (4, 5, 5), generator=g)
    captions = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8], []]
    scores = reader.score(codes, captions, batch_size=3)
    for c, caption, score in zip(codes, captions, scores):
        assert score == pytest.approx(float64_score(reader, c, caption), abs=1e-4)
        assert reader.score(c[None], [caption])[0] == pytest.approx(score, abs=1e-5)
    assert len(set(scores)) == 4


def test_reader_learns_what_only_the_layout_tells():
    """Two codes, the same count of each in every grid: only where they are (top or bottom
    half) tells the caption, so a bag of codes cannot read it."""
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.Generator().manual_seed(0)

    def grids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = torch.randint(0, 2, (n,), generator=g)
        codes = torch.zeros(n, 4, 4, dtype=torch.long)
        codes[:, :2] = top[:, None, None]
        codes[:, 2:] = 1 - top[:, None, None]
        return codes, top

    reader = small_reader(codebook, text_vocab=6)
    codes, top = grids(256)
    words = {0: [2, 5], 1: [3, 5]}  # "<ones below> end", "<ones above> end"
    fit(reader, codes, [words[int(t)] for t in top], epochs=30, batch_size=32, lr=1e-2)
    test, truth = grids(64)
    right = reader.score(test, [words[int(t)] for t in truth])
    wrong = reader.score(test, [words[1 - int(t)] for t in truth])
    assert sum(a > b for a, b in zip(right, wrong)) == 64


def reading_bundle(image=None, audio=None, proto: bytes = b""):
    """What `load_reader` looks at in a tokenizer bundle: the codebooks and the text model."""
    return SimpleNamespace(image=None if image is None else SimpleNamespace(codebook=image),
                           audio=None if audio is None else SimpleNamespace(
                               codebooks=lambda: list(audio)),
                           text=SimpleNamespace(model_proto=proto))


def test_save_load_round_trip_and_mismatched_tokenizers(tmp_path, text_tokenizer):
    bundle = tiny_bundle(text_tokenizer)
    book, proto = bundle.image.codebook, text_tokenizer.model_proto
    reader = small_reader(book, text_tokenizer.vocab_size)
    save_reader(tmp_path / "r", reader, fingerprint(book, proto))
    loaded = load_reader(tmp_path / "r", bundle)
    codes = torch.randint(0, book.shape[0], (3, 4, 4))
    captions = [text_tokenizer.encode(t) for t in ("a red circle", "blue", "on a star")]
    assert loaded.score(codes, captions) == reader.score(codes, captions)
    with pytest.raises(ReaderError, match="other tokenizers"):
        load_reader(tmp_path / "r", reading_bundle(book + 1, proto=proto))
    with pytest.raises(ReaderError, match="other tokenizers"):
        load_reader(tmp_path / "r", reading_bundle(book, proto=proto + b"x"))
    with pytest.raises(ReaderError, match="needs the checkpoint's image and text"):
        load_reader(tmp_path / "r", reading_bundle(None, proto=proto))
    weights = tmp_path / "r" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ReaderError, match="corrupt or truncated"):
        load_reader(tmp_path / "r", bundle)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "config.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ReaderError, match="not a reader"):
        load_reader(tmp_path / "q", bundle)


def write_pairs(folder, n: int) -> None:
    """A manifest of n images (left or right half red) in draw: and write: lines, plus lines
    the reader must leave out (audio, no caption, a missing image)."""
    lines = []
    for i in range(n):
        side = "left" if i % 2 else "right"
        pixels = torch.zeros(16, 16, 3, dtype=torch.uint8)
        pixels[:, :8 if side == "left" else 8:, 0] = 255
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
        lines.append({"segments": [{"text": f"draw: red on the {side}"}, {"image": f"{i}.png"}]})
        lines.append({"segments": [{"text": "write:"}, {"image": f"{i}.png"},
                                   {"text": f"red on the {side}"}]})
    lines.append({"segments": [{"text": "write:"}, {"image": "0.png"}]})  # no caption
    lines.append({"segments": [{"text": "draw: gone"}, {"image": "missing.png"}]})
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_reader_train_command_and_rerank_by_the_reader(tmp_path, text_tokenizer, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tiny_bundle(text_tokenizer))
    write_pairs(tmp_path, 12)
    argv = ["reader", "train", str(tmp_path / "m.jsonl"), "--tokenizer", str(ckpt),
            "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 pairs" in printed and "1 skipped" in printed  # the missing image's line
    config = json.loads((ckpt / READER_DIR / "config.json").read_text())
    assert config["pairs"] == 12 and config["epochs"] == 2

    checkpoint = load_checkpoint(ckpt)
    gen = Generator(checkpoint)  # finds ckpt/reader
    assert set(gen.readers) == {"image"}
    prompts = [Document([TextSegment("draw: red on the left")]),
               Document([TextSegment("draw: red on the right")])]
    settings = GenerationSettings(target="image", seed=5, batch_size=2)
    best = gen.generate(prompts, replace(settings, rerank=3))
    rounds = [gen.generate(prompts, replace(settings, seed=5 + j * ROUND_SEEDS))
              for j in range(3)]
    for i, text in enumerate(["red on the left", "red on the right"]):
        codes = torch.stack([r[i].document[0].codes for r in rounds])
        scores = gen.readers["image"].score(codes, [text_tokenizer.encode(text)] * 3)
        j = max(range(3), key=lambda k: scores[k])
        assert best[i].ids == rounds[j][i].ids
        assert best[i].score == pytest.approx(scores[j], abs=1e-4)
    plain = Generator(checkpoint, reader="none")
    assert plain.readers == {}
    answers = [a.document for a in best]
    assert plain.read_back(answers, ["red on the left"] * 2, settings) != \
        gen.read_back(answers, ["red on the left"] * 2, settings)

    out = tmp_path / "exported"
    assert main(["model", "export", str(ckpt), str(out)]) == 0
    assert set(Generator(load_checkpoint(out)).readers) == {"image"}  # export carries it
    bundle = tiny_bundle(text_tokenizer)
    with torch.no_grad():
        bundle.image.codebook.mul_(2)  # another image tokenizer
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--text", "draw: red", "--to", "image", "--rerank", "2",
                 "--output", str(tmp_path / "g"), "--quiet"]) == 0
    result = json.loads((tmp_path / "g" / "result.json").read_text())
    assert result["readers"] == {"image": str(ckpt / READER_DIR)}
    assert main(["generate", str(ckpt), "--text", "draw: red", "--to", "image", "--rerank", "2",
                 "--output", str(tmp_path / "g"), "--quiet", "--reader", "none"]) == 0
    assert json.loads((tmp_path / "g" / "result.json").read_text())["readers"] == {}
    other = tiny_checkpoint(tmp_path / "other", bundle)
    shutil.copytree(ckpt / READER_DIR, other / READER_DIR)
    capsys.readouterr()
    assert main(["generate", str(other), "--text", "draw: red", "--to", "image",
                 "--rerank", "2", "--output", str(tmp_path / "o")]) == 1
    assert "other tokenizers" in capsys.readouterr().err


def test_reader_train_errors(tmp_path, text_tokenizer, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tiny_bundle(text_tokenizer))
    (tmp_path / "none.jsonl").write_text(json.dumps({"segments": [{"text": "hi"}]}) + "\n")
    assert main(["reader", "train", str(tmp_path / "none.jsonl"), "--tokenizer", str(ckpt),
                 "--no-progress"]) == 1
    assert "no line with one image and a caption" in capsys.readouterr().err
    assert main(["reader", "train", str(tmp_path / "none.jsonl"), "--tokenizer", str(ckpt),
                 "--epochs", "0"]) == 1
    assert not (ckpt / READER_DIR).exists()
