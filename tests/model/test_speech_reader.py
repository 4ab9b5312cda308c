"""The speech reader: its scores against float64 equations written out by hand, clips of
other lengths in a batch that do not change a clip's score, learning a caption that only the
order of the frames tells, save/load checked against the tokenizers, `omnitok reader train
--kind audio`, and --rerank of text answers to speech by the model plus the reader."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from omnitok.cli import main
from omnitok.generate.generator import ROUND_SEEDS, GenerationSettings, Generator
from omnitok.model.checkpoint import load_checkpoint
from omnitok.model.reader import (
    SPEECH_READER_DIR,
    ReaderConfig,
    ReaderError,
    SpeechReader,
    fingerprint,
    fit,
    load_reader,
    reader_codebooks,
    save_reader,
)
from omnitok.tokenizers.audio_io import save_audio
from omnitok.tokenizers.document import AudioSegment, Document, TextSegment

from ..generate.conftest import tiny_bundle, tiny_checkpoint


def small_reader(codebooks: torch.Tensor, text_vocab: int = 20, seed: int = 0) -> SpeechReader:
    torch.manual_seed(seed)
    config = ReaderConfig(text_vocab=text_vocab, codebook_size=codebooks.shape[1],
                          code_dim=codebooks.shape[2], width=8, hidden=10, kind="audio",
                          levels=codebooks.shape[0])
    return SpeechReader(config, codebooks).eval()


def gru_step(weights: list[torch.Tensor], x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    w_ih, w_hh, b_ih, b_hh = weights
    (ir, iz, i_n), (hr, hz, hn) = (w_ih @ x + b_ih).chunk(3), (w_hh @ h + b_hh).chunk(3)
    reset, update = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    return (1 - update) * torch.tanh(i_n + reset * hn) + update * h


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def conv(layer, x: torch.Tensor) -> torch.Tensor:
    """A Conv1d (kernel k, padding k // 2, its stride) over x (T, C_in), a sum per output."""
    w, b = layer.weight.double(), layer.bias.double()
    k, stride = w.shape[2], layer.stride[0]
    out = []
    for u in range(0, x.shape[0], stride):
        y = b.clone()
        for j in range(k):
            t = u + j - k // 2
            if 0 <= t < x.shape[0]:
                y = y + w[:, :, j] @ x[t]
        out.append(y)
    return torch.stack(out)


def float64_score(reader: SpeechReader, codes: torch.Tensor, caption: list[int]) -> float:
    """log p(caption + <eos> | codes (levels, F)), every equation by hand in float64."""
    with torch.no_grad():
        books = reader.codebooks.double()
        x = sum(books[k][codes[k]] for k in range(codes.shape[0]))  # (F, dim)
        for layer in reader.convs:
            x = gelu(conv(layer, x))
        enc, half = reader.encoder, reader.config.hidden // 2

        def params(suffix: str) -> list[torch.Tensor]:
            return [getattr(enc, f"{n}_l0{suffix}").double()
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

        h, forward = torch.zeros(half, dtype=torch.float64), []
        for v in x:
            h = gru_step(params(""), v, h)
            forward.append(h)
        h, backward = torch.zeros(half, dtype=torch.float64), []
        for v in x.flip(0):
            h = gru_step(params("_reverse"), v, h)
            backward.insert(0, h)
        states = torch.cat([torch.stack(forward), torch.stack(backward)], 1)  # (F', hidden)

        def linear(layer, v: torch.Tensor) -> torch.Tensor:
            return layer.weight.double() @ v + layer.bias.double()

        h = torch.tanh(linear(reader.start, states.mean(0)))
        g = reader.gru
        dec = [p.double() for p in (g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)]
        total = 0.0
        for a, b in zip([reader.config.bos, *caption], [*caption, reader.config.eos]):
            h = gru_step(dec, reader.embed.weight[a].double(), h)
            weights = torch.softmax(states @ linear(reader.query, h), 0)
            mixed = torch.tanh(linear(reader.mix, torch.cat([h, weights @ states])))
            total += torch.log_softmax(linear(reader.out, mixed), 0)[b].item()
    return total


def test_scores_equal_float64_equations_and_ignore_other_clips():
    g = torch.Generator().manual_seed(3)
    reader = small_reader(torch.randn(2, 16, 3, generator=g))
    clips = [torch.randint(0, 16, (2, n), generator=g) for n in (7, 1, 12, 4)]
    captions = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8], []]
    scores = reader.score(clips, captions, batch_size=3)
    for clip, caption, score in zip(clips, captions, scores):
        assert score == pytest.approx(float64_score(reader, clip, caption), abs=1e-4)
        assert reader.score([clip], [caption])[0] == pytest.approx(score, abs=1e-5)
    assert len(set(scores)) == 4
    with pytest.raises(ReaderError, match="without frames"):
        reader.score([torch.zeros(2, 0, dtype=torch.long)], [[1]])


def test_reader_learns_what_only_the_order_tells():
    """Two sounds, as many frames of each in every clip: only which comes first tells the
    caption, so a bag of frames cannot read it."""
    books = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    g = torch.Generator().manual_seed(0)

    def clips(n: int) -> tuple[list[torch.Tensor], list[int]]:
        first = torch.randint(0, 2, (n,), generator=g).tolist()
        out = []
        for f in first:
            length = int(torch.randint(3, 9, (1,), generator=g))
            codes = torch.zeros(2, 2 * length, dtype=torch.long)
            codes[0, :length], codes[0, length:] = f, 1 - f
            out.append(codes)
        return out, first

    reader = small_reader(books, text_vocab=6)
    train, first = clips(256)
    words = {0: [2, 5], 1: [3, 5]}
    fit(reader, train, [words[f] for f in first], epochs=30, batch_size=32, lr=1e-2)
    test, truth = clips(64)
    right = reader.score(test, [words[f] for f in truth])
    wrong = reader.score(test, [words[1 - f] for f in truth])
    assert sum(a > b for a, b in zip(right, wrong)) == 64


def test_save_load_round_trip_and_mismatched_codebooks(tmp_path, text_tokenizer):
    bundle = tiny_bundle(text_tokenizer)
    books, proto = reader_codebooks(bundle, "audio"), text_tokenizer.model_proto
    assert books.shape == (2, 16, bundle.audio.codebooks()[0].shape[1])
    reader = small_reader(books, text_tokenizer.vocab_size)
    save_reader(tmp_path / "r", reader, fingerprint(books, proto))
    loaded = load_reader(tmp_path / "r", bundle)
    assert isinstance(loaded, SpeechReader) and loaded.config.kind == "audio"
    clips = [torch.randint(0, 16, (2, n)) for n in (5, 9)]
    captions = [text_tokenizer.encode(t) for t in ("a red circle", "blue")]
    assert loaded.score(clips, captions) == reader.score(clips, captions)
    other = tiny_bundle(text_tokenizer)
    with torch.no_grad():
        other.audio.codebooks()[1].add_(1)
    with pytest.raises(ReaderError, match="other tokenizers"):
        load_reader(tmp_path / "r", other)
    with pytest.raises(ReaderError, match="needs the checkpoint's audio and text"):
        load_reader(tmp_path / "r", tiny_bundle(text_tokenizer, audio=False))


def tone(path, hertz: float, seconds: float = 0.1, rate: int = 16000) -> None:
    t = torch.arange(int(seconds * rate)) / rate
    save_audio(0.5 * torch.sin(2 * math.pi * hertz * t)[None], rate, path)


def write_speech_pairs(folder, n: int) -> None:
    """A manifest of n tones (low or high) in write: lines, plus lines the speech reader must
    leave out (a part of a clip, an image, no caption, a corrupt file)."""
    lines = []
    for i in range(n):
        pitch = "high" if i % 2 else "low"
        tone(folder / f"{i}.wav", 2000 if pitch == "high" else 300)
        lines.append({"segments": [{"text": "write:"}, {"audio": f"{i}.wav"},
                                   {"text": f"a {pitch} tone"}]})
    lines.append({"segments": [{"text": "say:"}, {"text": "a"},
                               {"audio": "0.wav", "to": 0.05}]})  # a word's part of a clip
    lines.append({"segments": [{"text": "write:"}, {"audio": "1.wav"}]})  # no caption
    (folder / "bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    lines.append({"segments": [{"text": "write:"}, {"audio": "bad.wav"}, {"text": "a tone"}]})
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_speech_reader_command_and_text_rerank(tmp_path, text_tokenizer, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tiny_bundle(text_tokenizer))
    write_speech_pairs(tmp_path, 10)
    argv = ["reader", "train", str(tmp_path / "m.jsonl"), "--tokenizer", str(ckpt),
            "--kind", "audio", "--epochs", "2", "--batch-size", "4", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speech reader, 10 pairs" in printed and "1 unreadable audio clips" in printed
    config = json.loads((ckpt / SPEECH_READER_DIR / "config.json").read_text())
    assert config["pairs"] == 10 and config["config"]["kind"] == "audio"

    checkpoint = load_checkpoint(ckpt)
    gen = Generator(checkpoint)  # finds ckpt/speech_reader
    reader = gen.readers["audio"]
    clips = [gen.tokenizers.encode_file(tmp_path / f"{i}.wav")[1] for i in (0, 1)]
    prompts = [Document([TextSegment("write:"), AudioSegment(c)]) for c in clips]
    settings = GenerationSettings(target="text", seed=2, batch_size=2, max_new_tokens=6)
    best = gen.generate(prompts, replace(settings, rerank=3))
    plain = Generator(checkpoint, reader="none")
    model_only = replace(settings, speech_weight=0.0)
    from omnitok.generate.generator import candidate_sampling

    drawn = candidate_sampling(settings)
    rounds = [gen.generate(prompts, replace(settings if j == 0 else drawn,
                                            seed=2 + j * ROUND_SEEDS)) for j in range(3)]
    for i, prompt in enumerate(prompts):
        texts = [" ".join(s.text for s in r[i].document) for r in rounds]
        by_model = plain.caption_scores([prompt] * 3, texts, model_only)
        by_reader = reader.score([clips[i]] * 3, text_tokenizer.encode_batch(texts))
        scores = [a + b for a, b in zip(by_model, by_reader)]
        j = max(range(3), key=lambda k: scores[k])
        assert best[i].ids == rounds[j][i].ids
        assert best[i].score == pytest.approx(scores[j], abs=1e-3)
    out = tmp_path / "exported"
    assert main(["model", "export", str(ckpt), str(out)]) == 0
    assert set(Generator(load_checkpoint(out)).readers) == {"audio"}  # export carries it
    assert set(Generator(checkpoint, reader=[str(ckpt / SPEECH_READER_DIR)]).readers) == \
        {"audio"}
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--text", "write:", "--audio", str(tmp_path / "0.wav"),
                 "--to", "text", "--rerank", "2", "--max-new-tokens", "4",
                 "--output", str(tmp_path / "g"), "--quiet", "--reader", "none", "auto"]) == 1
    assert "--reader none goes alone" in capsys.readouterr().err


def test_speech_reader_train_errors(tmp_path, text_tokenizer, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tiny_bundle(text_tokenizer))
    tone(tmp_path / "0.wav", 300)
    lines = [{"segments": [{"text": "say:"}, {"text": "a"}, {"audio": "0.wav", "to": 0.05}]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    argv = ["reader", "train", str(tmp_path / "m.jsonl"), "--tokenizer", str(ckpt),
            "--kind", "audio", "--no-progress"]
    assert main(argv) == 1
    assert "no line with one audio clip and a caption" in capsys.readouterr().err
    no_audio = tiny_checkpoint(tmp_path / "na", tiny_bundle(text_tokenizer, audio=False))
    assert main(["reader", "train", str(tmp_path / "m.jsonl"), "--tokenizer", str(no_audio),
                 "--kind", "audio", "--no-progress"]) == 1
    assert "needs audio and text tokenizers" in capsys.readouterr().err
    assert not (ckpt / SPEECH_READER_DIR).exists()


def test_workers_encode_the_clips_as_one_process_does(tmp_path, text_tokenizer, monkeypatch):
    import omnitok.train.reader as train_reader
    from omnitok.train.encode import single_thread

    ckpt = tiny_checkpoint(tmp_path / "ckpt", tiny_bundle(text_tokenizer))
    write_speech_pairs(tmp_path, 6)
    pairs, _ = train_reader.reader_pairs(tmp_path / "m.jsonl", "audio")
    bundle = load_checkpoint(ckpt).tokenizers
    monkeypatch.setattr(train_reader, "CHUNK", 2)  # several chunks, for two workers
    done = []
    codes, captions, bad = train_reader.encode_pairs(bundle, pairs, "audio", done.append,
                                                     workers=2, folder=ckpt)
    with single_thread():
        alone, alone_captions, alone_bad = train_reader.encode_pairs(bundle, pairs, "audio")
    assert bad == alone_bad == 1 and captions == alone_captions and len(codes) == 6
    assert all(torch.equal(a, b) for a, b in zip(codes, alone))
    assert sum(done) == 7
