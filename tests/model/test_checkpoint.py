"""Checkpoint folders: round trips, atomic writes, and precise errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from omnitok.model import checkpoint as ckpt_mod
from omnitok.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.vocab import AudioSpec, Vocab


def make(text_tokenizer, tie=False, dtype=torch.float32):
    vocab = Vocab(text_size=text_tokenizer.vocab_size, image_size=64,
                  audio=AudioSpec(codebook_size=32, n_q=2, sample_rate=16000, frame_rate=50))
    args = ModelArgs.from_name("debug", vocab_size=vocab.padded_size, tie_embeddings=tie)
    return Transformer(args).to(dtype).eval(), vocab


@pytest.mark.parametrize("tie,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_round_trip(tmp_path, text_tokenizer, tie, dtype):
    model, vocab = make(text_tokenizer, tie, dtype)
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab, text_tokenizer))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json", "model.safetensors", "text.model", "vocab.json"]
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.vocab == vocab and loaded.model.args == model.args
    assert loaded.text.encode("a red circle") == text_tokenizer.encode("a red circle")
    assert loaded.model.tok_embeddings.weight.dtype == dtype
    if tie:
        assert loaded.model.output.weight is loaded.model.tok_embeddings.weight
    idx = torch.randint(0, vocab.size, (2, 17))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx), model(idx))


def test_truncated_weights(tmp_path, text_tokenizer):
    model, vocab = make(text_tokenizer)
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab))
    weights = tmp_path / "ck" / "model.safetensors"
    data = weights.read_bytes()
    for cut in (5, 100, len(data) // 2, len(data) - 1):
        weights.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(tmp_path / "ck")


def test_config_that_disagrees_with_weights(tmp_path, text_tokenizer):
    model, vocab = make(text_tokenizer)
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab))
    config_path = tmp_path / "ck" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["n_kv_heads"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.wqkv\.weight: \(128, 64\) "
                                              r"in the weights, \(192, 64\) from config.json"):
        load_checkpoint(tmp_path / "ck")
    config["model"]["n_kv_heads"], config["model"]["n_layers"] = 2, 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensors: layers\.2\."):
        load_checkpoint(tmp_path / "ck")
    config["model"]["n_layers"], config["model"]["vocab_size"] = 2, 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vocab.json has .* vocab_size=64"):
        load_checkpoint(tmp_path / "ck")


def test_missing_pieces(tmp_path, text_tokenizer):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path / "empty")
    model, vocab = make(text_tokenizer)
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_checkpoint(tmp_path / "ck")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, text_tokenizer, monkeypatch):
    model, vocab = make(text_tokenizer)
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab, text_tokenizer))
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", boom)
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", model, TokenizerBundle(vocab, text_tokenizer))
    after = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind


def test_export_casts_weights_and_drops_training_state(tmp_path, text_tokenizer, capsys):
    from omnitok.cli import main

    model, vocab = make(text_tokenizer)
    src = save_checkpoint(tmp_path / "run", model, TokenizerBundle(vocab, text_tokenizer))
    (src / "optimizer.pt").write_bytes(b"training state")
    assert main(["model", "export", str(src), str(tmp_path / "ship")]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert not (tmp_path / "ship" / "optimizer.pt").exists()
    shipped = load_checkpoint(tmp_path / "ship")
    for name, weight in model.state_dict().items():
        assert torch.equal(shipped.model.state_dict()[name], weight.to(torch.bfloat16)), name
    assert main(["model", "export", str(src), str(src)]) == 1
    assert "other than the source" in capsys.readouterr().err
