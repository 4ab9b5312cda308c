"""Fine-tuning a converted Hugging Face Llama: `omnitok convert hf` -> shards in its
vocabulary -> `omnitok train --init ... --freeze text`, settings from a --config file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnitok.cli import main
from omnitok.model.checkpoint import load_checkpoint
from omnitok.train.shards import TEXT, TokenDocument, write_shards

transformers = pytest.importorskip("transformers")


def hf_llama(folder) -> None:
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def text_shards(folder, vocab, n: int = 64) -> None:
    """Documents of random text ids in `vocab` (<bos> text <eos>)."""
    rng, text = np.random.default_rng(0), vocab.range("text")
    docs = []
    for i in range(n):
        body = rng.integers(text.start, text.start + 40, rng.integers(5, 40))
        ids = np.concatenate([[vocab.special("<bos>")], body, [vocab.special("<eos>")]])
        docs.append(TokenDocument(ids.astype(np.int64), np.array([[TEXT, 1, len(ids) - 1]]),
                                  i + 1))
    write_shards(folder, vocab, docs)


def test_finetune_a_converted_llama_with_frozen_text(tmp_path, capsys):
    hf_llama(tmp_path / "hf")
    assert main(["convert", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"),
                 "--image-codebook", "64", "--audio-levels", "2", "--audio-codebook", "32"]) == 0
    before = load_checkpoint(tmp_path / "ckpt")
    text_shards(tmp_path / "shards", before.vocab)
    config = {"max_steps": 4, "batch_size": 2, "seq_len": 64, "lr": 1e-2, "warmup_steps": 1,
              "freeze": ["text"], "threads": 1, "progress": False, "log_every": 1}
    (tmp_path / "exp.json").write_text(json.dumps(config))
    assert main(["train", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"),
                 "--init", str(tmp_path / "ckpt"), "--config", str(tmp_path / "exp.json")]) == 0
    assert "steps 1-4 (init" in capsys.readouterr().out
    after = load_checkpoint(tmp_path / "run" / "last")
    assert after.model.args == before.model.args
    text = before.vocab.range("text")
    old, new = before.model.state_dict(), after.model.state_dict()
    for name in old:
        if name in ("tok_embeddings.weight", "output.weight"):
            assert torch.equal(old[name][text.start:text.stop], new[name][text.start:text.stop])
        else:
            assert torch.equal(old[name], new[name]), name
    assert not torch.equal(old["output.weight"][text.stop:], new["output.weight"][text.stop:])
