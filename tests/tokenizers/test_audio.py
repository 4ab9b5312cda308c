"""The audio tokenizer: shapes and padding, RVQ math against float64 references, codebook
training traps (dead codes, k-means), persistence, the pretrained-checkpoint loader, audio I/O
with bad files, bounded-memory long inputs and training manifests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from encodec.quantization.core_vq import EuclideanCodebook

from omnitok.tokenizers.audio import (
    AudioTokenizer,
    AudioTokenizerConfig,
    AudioTokenizerError,
    load_audio,
    save_audio,
)
from omnitok.tokenizers.audio_codecs import (
    FastELU,
    nearest_code,
    rvq_decode,
    rvq_encode,
    set_elu,
)
from omnitok.tokenizers.audio_data import collect_audio
from omnitok.tokenizers.audio_metrics import MultiScaleMel, si_snr
from omnitok.tokenizers.audio_rvq import ema_update_, init_codebooks, kmeans
from omnitok.tokenizers.audio_train import train_audio_command, train_audio_tokenizer

SR = 8000


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions run fastest (and steadiest on a shared CPU) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: str = "encodec", **kw) -> AudioTokenizerConfig:
    """A codec small enough to train for a few steps in a test (hop 16 at 8 kHz)."""
    base = dict(kind=kind, sample_rate=SR, n_q=3, codebook_size=16, n_filters=4, dimension=8,
                ratios=(4, 4), lstm=0, n_mels=16, n_fft=128, mel_hop=16, mel_stack=1)
    base.update(kw)
    return AudioTokenizerConfig(**base)


def tones(n: int, seconds: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """Clips (1, T) of a few sine tones with random pitch and loudness."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        f0, amp = 150 + 700 * torch.rand((), generator=g), 0.1 + 0.4 * torch.rand((), generator=g)
        out.append((amp * torch.sin(2 * math.pi * f0 * t) * torch.hann_window(len(t)))[None])
    return out


def one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.fixture(scope="module")
def trained():
    """A tiny encodec-kind codec after a few seconds of training, with its stats."""
    torch.manual_seed(0)
    return train_audio_tokenizer(tones(24), tiny(), steps=40, batch_size=4, segment_seconds=0.25,
                                 kmeans_vectors=200, progress=False, threads=1)


# ---- shapes, padding, code checks ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["encodec", "mel"])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 100])
def test_shapes_pad_and_trim(kind, length):
    tok = AudioTokenizer(tiny(kind, mel_stack=2 if kind == "mel" else 1)).eval()
    hop = tok.hop_length
    codes = tok.encode(torch.randn(2, 1, length) * 0.1)
    assert codes.shape == (2, 3, -(-length // hop)) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size
    assert tok.decode(codes, length).shape == (2, 1, length)
    assert tok.decode(codes).shape == (2, 1, codes.shape[-1] * hop)


def test_empty_and_malformed_inputs_are_refused():
    tok = AudioTokenizer(tiny())
    for bad in (torch.zeros(1, 1, 0), torch.zeros(0, 1, 16), torch.zeros(16), torch.zeros(1, 2, 16),
                torch.zeros(1, 1, 16, dtype=torch.int16)):
        with pytest.raises(AudioTokenizerError) as e:
            tok.encode(bad)
        one_line(e)
    with pytest.raises(AudioTokenizerError) as e:
        tok.encode_long(torch.zeros(1, 0))
    one_line(e, "empty")


def test_decode_refuses_bad_codes():
    tok = AudioTokenizer(tiny())
    good = torch.zeros(1, 3, 4, dtype=torch.long)
    cases = {"[0, 16)": good + 16, "[-1, -1]": good - 1, "integers": good.float(),
             "levels": torch.zeros(1, 4, 4, dtype=torch.long), "(B, K, F)": good[0]}
    for needle, codes in cases.items():
        with pytest.raises(AudioTokenizerError) as e:
            tok.decode(codes)
        one_line(e, needle)
    with pytest.raises(AudioTokenizerError):
        tok.decode(good, length=4 * tok.hop_length + 1)


def test_fewer_levels_decode_and_each_level_refines(trained):
    tok, _ = trained
    x = torch.cat(tones(4, seed=5))[:, None]
    codes = tok.encode(x)
    emb = tok.embed(x)
    errors = []
    for k in range(1, tok.n_q + 1):
        y = tok.decode(codes[:, :k], x.shape[-1])
        assert y.shape == x.shape and torch.isfinite(y).all()
        ref = tok.codec.synthesize(rvq_decode(codes[:, :k], tok.codebooks()))[..., : x.shape[-1]]
        torch.testing.assert_close(y, ref)
        errors.append((rvq_decode(codes[:, :k], tok.codebooks()) - emb).pow(2).mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    assert torch.equal(tok.encode(x, n_q=2), codes[:, :2])
    two = tok.with_levels(2)
    assert two.spec().n_q == 2 and torch.equal(two.encode(x), codes[:, :2])
    torch.testing.assert_close(two.decode(codes[:, :2]), tok.decode(codes[:, :2]))


@pytest.mark.parametrize("shape", [(5, 123), (2, 3, 77), (1,)])
def test_fast_elu_matches_float64_elu_value_and_gradient(shape):
    x = (torch.randn(shape) * 4).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    grad = torch.randn(shape)
    y, ref = FastELU()(x), torch.nn.functional.elu(x64)
    y.backward(grad)
    ref.backward(grad.double())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref.detach(), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-7, rtol=1e-6)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(FastELU()(x).double(), ref.detach(), atol=1e-7, rtol=1e-6)


def test_codec_uses_fast_elu_and_swapping_back_keeps_weights_and_codes():
    torch.manual_seed(0)
    tok = AudioTokenizer(AudioTokenizerConfig(n_filters=4, dimension=16, ratios=(4, 2),
                                              codebook_size=64, n_q=2)).eval()
    acts = [m for m in tok.modules() if isinstance(m, (FastELU, torch.nn.ELU))]
    assert acts and all(isinstance(m, FastELU) for m in acts)
    wav = 0.1 * torch.randn(2, 1, 4000)
    codes, state = tok.encode(wav), {k: v.clone() for k, v in tok.state_dict().items()}
    out = tok.decode(codes)
    set_elu(tok, fast=False)
    assert all(isinstance(m, torch.nn.ELU) for m in tok.modules()
               if isinstance(m, (FastELU, torch.nn.ELU)))
    assert tok.state_dict().keys() == state.keys()
    assert (tok.encode(wav) == codes).float().mean() > 0.99
    torch.testing.assert_close(tok.decode(codes), out, atol=1e-5, rtol=1e-4)


# ---- RVQ math ------------------------------------------------------------------------------------
def test_nearest_code_search_matches_float64_bruteforce():
    g = torch.Generator().manual_seed(1)
    books = [torch.randn(64, 6, generator=g) * s for s in (1.0, 0.5, 0.25)]
    emb = torch.randn(3, 6, 41, generator=g)
    codes = rvq_encode(emb, books)
    residual = emb.double().transpose(1, 2).reshape(-1, 6)
    for k, book in enumerate(books):
        dist = ((residual[:, None, :] - book.double()[None]) ** 2).sum(-1)
        want = dist.argmin(1)
        assert torch.equal(codes[:, k].reshape(-1), want), f"level {k}"
        residual = residual - book.double()[want]
    back = rvq_decode(codes, books).double().transpose(1, 2).reshape(-1, 6)
    torch.testing.assert_close(emb.double().transpose(1, 2).reshape(-1, 6) - back, residual,
                               atol=1e-5, rtol=0)


def _codebook(k: int, d: int) -> EuclideanCodebook:
    return EuclideanCodebook(dim=d, codebook_size=k, kmeans_init=False)


def test_dead_code_restart_survives_the_next_ema_step():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=g)
    book = _codebook(4, 2)
    book.embed.copy_(torch.cat([centres, torch.tensor([[100.0, 100.0]])]))
    book.embed_avg.copy_(book.embed)
    book.cluster_size.copy_(torch.tensor([1.0, 1.0, 1.0, 0.0]))  # code 3 is dead
    restarted = ema_update_(book, x, nearest_code(x, book.embed), decay=0.9, dead_threshold=0.5,
                            generator=g)
    assert restarted == 1
    revived = book.embed[3].clone()
    assert torch.cdist(revived[None], x).min() < 1e-6  # a vector of the batch
    ema_update_(book, x, nearest_code(x, book.embed), decay=0.9, dead_threshold=0.5, generator=g)
    assert torch.cdist(book.embed[3][None], x).min() < 0.5  # not pulled back or zeroed
    assert (book.embed[3] - revived).norm() < 0.5


def test_kmeans_init_uses_many_codes_on_clustered_data():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(32, 4, generator=g) * 10
    x = centres.repeat_interleave(40, 0) + 0.05 * torch.randn(1280, 4, generator=g)
    means, counts = kmeans(x, 32, iters=10, generator=g)
    assert int((counts > 0).sum()) >= 28
    books = [_codebook(32, 4), _codebook(32, 4)]
    init_codebooks(books, x, iters=10, generator=g)
    codes = nearest_code(x, books[0].embed)
    assert codes.unique().numel() >= 28
    residual = x - books[0].embed[codes]
    assert residual.pow(2).mean() < 0.1 * x.var()
    assert nearest_code(residual, books[1].embed).unique().numel() >= 20  # level 2 lives too
    assert torch.allclose(books[0].embed_avg / books[0].cluster_size[:, None], books[0].embed)


# ---- training ------------------------------------------------------------------------------------
def test_tiny_training_lowers_mel_loss_and_uses_codes(trained):
    tok, stats = trained
    mels = [r["mel"] for r in stats.history]
    assert stats.steps == 40 and mels[-1] < 0.8 * mels[0]
    assert all(u >= 3 / 16 for u in stats.usage), stats.usage  # no collapse to 1-2 codes
    x = torch.cat(tones(3, seed=9))[:, None]
    y = tok.decode(tok.encode(x), x.shape[-1])
    untrained = AudioTokenizer(tiny()).eval()
    y0 = untrained.decode(untrained.encode(x), x.shape[-1])
    mel = MultiScaleMel(SR, n_ffts=(128, 256))
    assert mel(y, x) < mel(y0, x)


def test_mel_kind_trains_and_round_trips():
    clips = tones(16)
    config = tiny("mel", n_fft=256, mel_hop=32, n_mels=32, griffin_lim_iters=64)
    tok, stats = train_audio_tokenizer(clips, config, steps=5, progress=False)
    assert all(u > 0.5 for u in stats.usage), stats.usage
    x = clips[0][None]
    y = tok.decode(tok.encode(x), x.shape[-1])
    with torch.no_grad():  # Griffin-Lim of the unquantized frames: what inversion alone loses
        y_unquantized = tok.codec.synthesize(tok.embed(x))[..., : x.shape[-1]]
    mel = MultiScaleMel(SR, n_ffts=(128, 256))
    noise = 1e-3 * torch.randn_like(x)
    assert mel(y, x) < mel(y_unquantized, x) + 0.1
    assert mel(y, x) < 0.4 * mel(noise, x)


# ---- persistence and pretrained ------------------------------------------------------------------
def test_save_load_identical_codes_and_shape_errors(trained, tmp_path):
    tok, _ = trained
    tok.save(tmp_path / "tok")
    back = AudioTokenizer.load(tmp_path / "tok")
    assert back.config == tok.config and back.spec() == tok.spec()
    x = torch.cat(tones(2, seed=4))[:, None]
    assert torch.equal(back.encode(x), tok.encode(x))
    torch.testing.assert_close(back.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    cfg["config"]["dimension"] = 12
    (tmp_path / "tok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AudioTokenizerError) as e:
        AudioTokenizer.load(tmp_path / "tok")
    one_line(e, "config.json disagrees with", "model.safetensors",
             "(8,) in the weights, (12,) from config.json")
    with pytest.raises(AudioTokenizerError) as e:
        AudioTokenizer.load(tmp_path / "nothing")
    one_line(e, "nothing")


def test_config_round_trip_and_validation():
    c = tiny("mel", mel_stack=2)
    assert AudioTokenizerConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.frame_rate == SR / 32 and AudioTokenizerConfig().frame_rate == 50.0
    assert AudioTokenizerConfig.encodec_24khz().frame_rate == 75.0
    for bad in ({"kind": "wavenet"}, {"codebook_size": 1000}, {"n_q": 0}, {"ratios": ()}):
        with pytest.raises(AudioTokenizerError) as e:
            AudioTokenizerConfig(**bad)
        one_line(e)
    with pytest.raises(AudioTokenizerError):
        AudioTokenizerConfig.from_dict({"kind": "encodec", "colour": "red"})


@pytest.mark.filterwarnings("ignore::FutureWarning")  # encodec builds with the old weight_norm
def test_from_pretrained_24khz_loads_a_checkpoint_file(tmp_path, monkeypatch):
    from encodec import EncodecModel

    model = EncodecModel.encodec_model_24khz(pretrained=False)
    path = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(model.state_dict(), path)
    tok = AudioTokenizer.from_pretrained_24khz(path, n_q=2)
    key = "decoder.model.0.conv.conv.weight_v"
    assert torch.equal(tok.codec.state_dict()[key], model.state_dict()[key])
    assert tok.spec().frame_rate == 75.0 and tok.spec().sample_rate == 24000
    codes = tok.encode(torch.randn(1, 1, 2400) * 0.1)  # 0.1 s = 7.5 frames of 320 samples
    assert codes.shape == (1, 2, 8)
    ref = model.quantizer.encode(model.encoder(torch.nn.functional.pad(
        torch.zeros(1, 1, 2400), (0, 0))), 75, 1.5)  # encodec's own path: 1.5 kbps = 2 levels
    assert torch.equal(tok.encode(torch.zeros(1, 1, 2400)), ref.transpose(0, 1))
    tok.save(tmp_path / "tok24")  # ours from then on: safetensors + JSON
    x = torch.randn(1, 1, 800)
    assert torch.equal(AudioTokenizer.load(tmp_path / "tok24").encode(x), tok.encode(x))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(AudioTokenizerError) as e:
        AudioTokenizer.from_pretrained_24khz()
    one_line(e, str(tmp_path / "hub" / "checkpoints" / "encodec_24khz-*.th"), "never downloads")
    (tmp_path / "bad.th").write_bytes(b"not a checkpoint")
    with pytest.raises(AudioTokenizerError) as e:
        AudioTokenizer.from_pretrained_24khz(tmp_path / "bad.th")
    one_line(e, "bad.th")


# ---- audio files ---------------------------------------------------------------------------------
def test_resample_keeps_the_frequency(tmp_path):
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "a.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    wav = load_audio(tmp_path / "a.wav", 16000, 1)
    assert wav.shape == (1, 16000)
    spectrum = np.abs(np.fft.rfft(wav[0].numpy()))
    peak_hz = np.argmax(spectrum) * 16000 / wav.shape[-1]  # 1 Hz bins
    assert abs(peak_hz - 440) <= 1


def test_channel_policy(tmp_path):
    g = np.random.default_rng(0)
    eight = g.uniform(-0.5, 0.5, (800, 8)).astype(np.float32)
    sf.write(tmp_path / "eight.wav", eight, SR, subtype="FLOAT")
    mono = load_audio(tmp_path / "eight.wav", SR, 1)
    np.testing.assert_allclose(mono[0].numpy(), eight.mean(1), atol=1e-6)
    sf.write(tmp_path / "stereo.wav", eight[:, :2], SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", SR, 1)[0].numpy(),
                               eight[:, :2].mean(1), atol=1e-6)
    assert torch.equal(load_audio(tmp_path / "stereo.wav", SR, 2).T, torch.from_numpy(eight[:, :2]))
    up = load_audio(tmp_path / "eight.wav", SR, 2)
    assert up.shape == (2, 800) and torch.equal(up[0], up[1])


def test_bad_audio_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(4000, np.float32) + 0.1, SR, subtype="PCM_16")
    raw = good.read_bytes()
    files = {"corrupt.wav": b"RIFX" + raw[4:20] + b"\xff" * 24 + raw[44:],
             "truncated.wav": raw[: 44 + 1000], "cut_header.wav": raw[:30], "empty.wav": b"",
             "notes.wav": b"these are not samples\n" * 20}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    for name in [*files, "zero.wav", "missing.wav"]:
        with pytest.raises(AudioTokenizerError) as e:
            load_audio(tmp_path / name, SR, 1)
        one_line(e, name)
    with pytest.raises(AudioTokenizerError) as e:
        load_audio(tmp_path / "truncated.wav", SR, 1)
    one_line(e, "truncated")
    assert load_audio(good, SR, 1).shape == (1, 4000)


def test_save_audio_writes_pcm16_atomically(tmp_path):
    wav = torch.sin(torch.arange(800) / 5)[None] * 1.5  # clips
    save_audio(wav, SR, tmp_path / "out" / "x.wav")
    info = sf.info(tmp_path / "out" / "x.wav")
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", 800)
    back = load_audio(tmp_path / "out" / "x.wav", SR, 1)
    torch.testing.assert_close(back, wav.clamp(-1, 1), atol=1 / 16000, rtol=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.wav"]


# ---- long inputs ---------------------------------------------------------------------------------
def test_encode_long_is_chunked_and_matches_one_pass(trained):
    tok, _ = trained  # lstm=0: a finite receptive field, so context can make cuts invisible
    hop, seconds = tok.hop_length, 60
    wav = torch.randn(1, SR * seconds + 7, generator=torch.Generator().manual_seed(0)) * 0.1
    seen, embed = [], tok.codec.embed
    tok.codec.embed = lambda x: (seen.append(x.shape[-1]), embed(x))[1]
    try:
        codes = tok.encode_long(wav, chunk_seconds=5.0, context_seconds=0.5)
    finally:
        tok.codec.embed = embed
    frames = -(-wav.shape[-1] // hop)
    assert codes.shape == (3, frames)
    chunk, ctx = round(5.0 * tok.frame_rate), math.ceil(0.5 * tok.frame_rate)
    assert len(seen) == math.ceil(frames / chunk)
    assert max(seen) <= (chunk + 2 * ctx) * hop  # work per call does not grow with T
    full = tok.encode(wav[None, :, : SR * 12])[0]  # the first 12 s in one pass
    assert (codes[:, : full.shape[1]] == full).float().mean() > 0.99
    for cut in (chunk, 2 * chunk):  # frames next to a cut see the same audio as in one pass
        assert torch.equal(codes[:, cut - 8: cut + 8], full[:, cut - 8: cut + 8])
    back = tok.decode_long(codes, wav.shape[-1], chunk_seconds=5.0)
    assert back.shape == wav.shape


# ---- training data -------------------------------------------------------------------------------
def test_manifest_paths_are_checked_and_counted(tmp_path):
    root = tmp_path / "corpus"
    (root / "audio").mkdir(parents=True)
    for i in range(3):
        save_audio(tones(1, seed=i)[0], SR, root / "audio" / f"{i}.wav")
    (tmp_path / "outside.wav").write_bytes((root / "audio" / "0.wav").read_bytes())
    (root / "audio" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    lines = [{"segments": [{"text": "hi"}, {"audio": "audio/0.wav"}]},
             [{"audio": "audio/1.wav"}, {"image": "x.png"}],
             {"segments": [{"audio": "../outside.wav"}]},
             {"segments": [{"audio": "audio/../../outside.wav"}]},
             {"segments": [{"audio": "audio/broken.wav"}, {"audio": "audio/2.wav"}]},
             {"segments": "nope"}]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n"
    (root / "train.jsonl").write_text(text)
    data = collect_audio([root / "train.jsonl"], SR, 1)
    assert len(data.clips) == 3
    assert data.skipped == {"path escapes the manifest folder": 2, "bad JSON": 1,
                            "no segments": 1, "unreadable audio files": 1}
    summary = data.summary(SR)
    assert "2 path escapes" in summary and "outside.wav" in summary and "\n" not in summary
    assert len(collect_audio([root / "audio"], SR, 1).clips) == 3
    with pytest.raises(AudioTokenizerError):
        collect_audio([tmp_path / "nowhere.jsonl"], SR, 1)


@pytest.mark.parametrize("kind", ["mel", "encodec"])
def test_train_command_writes_a_loadable_tokenizer(tmp_path, kind):
    folder = tmp_path / "wavs"
    for i, clip in enumerate(tones(6, seconds=1.2)):
        save_audio(clip, SR, folder / f"{i}.wav")
    train_audio_command(data=[folder], out=tmp_path / "tok", kind=kind, sample_rate=16000,
                        n_q=2, codebook=64, steps=2, batch_size=2, segment_seconds=0.5,
                        threads=1)
    tok = AudioTokenizer.load(tmp_path / "tok")
    assert (tok.config.kind, tok.sample_rate, tok.n_q, tok.codebook_size) == (kind, 16000, 2, 64)
    wav = load_audio(folder / "0.wav", 16000, 1)
    assert tok.encode_long(wav).shape == (2, -(-wav.shape[-1] // tok.hop_length))


def test_si_snr_reference():
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    assert float(si_snr(3 * x, x).min()) > 60  # scale does not matter
    noisy = x + 0.1 * torch.randn(2, 1000, generator=torch.Generator().manual_seed(1))
    assert abs(float(si_snr(noisy, x).mean()) - 20) < 1.5
