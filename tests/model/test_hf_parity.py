"""Weights imported from `transformers` Llama/Qwen3 models reproduce their logits."""

from __future__ import annotations

import pytest
import torch

from omnitok.model.convert_hf import ConvertError, convert_hf
from omnitok.tokenizers.vocab import AudioSpec

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
AUDIO = AudioSpec(codebook_size=64, n_q=2, sample_rate=16000, frame_rate=50)


def save_hf(tmp_path, arch: str, shard: bool = False, **cfg):
    cls_cfg = getattr(transformers, f"{arch}Config")
    config = cls_cfg(**{**BASE, **cfg}, attn_implementation="eager")
    model = getattr(transformers, f"{arch}ForCausalLM")(config).eval()
    with torch.no_grad():  # random norms, so that a misplaced norm weight cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    kwargs = {"max_shard_size": "60KB"} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    return model


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


CASES = {
    "gqa": ("Llama", dict(num_attention_heads=4, num_key_value_heads=2)),
    "mha": ("Llama", dict(num_attention_heads=4, num_key_value_heads=4)),
    "mqa-tied": ("Llama", dict(num_attention_heads=4, num_key_value_heads=1,
                               tie_word_embeddings=True)),
    "llama3-rope": ("Llama", dict(num_attention_heads=4, num_key_value_heads=2, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}, rope_theta=500000.0)),
    "qwen3-qknorm": ("Qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    arch, cfg = CASES[case]
    hf = save_hf(tmp_path, arch, shard=case == "gqa", **cfg)
    if case == "gqa":
        assert (tmp_path / "model.safetensors.index.json").exists()
    model, vocab, _ = convert_hf(tmp_path, image_size=96, audio=AUDIO)
    ids = torch.randint(0, 300, (2, 100))
    with torch.no_grad():
        ref = hf(ids).logits
        ours = model(vocab.to_global("text", ids))
    text = vocab.range("text")
    assert max_rel_err(ours[..., text.start:text.stop], ref) <= 1e-4


def test_new_rows_are_the_mean_and_bos_eos_are_copied(tmp_path):
    hf = save_hf(tmp_path, "Llama", num_attention_heads=4, num_key_value_heads=2)
    model, vocab, _ = convert_hf(tmp_path, image_size=96, audio=AUDIO)
    emb = hf.model.embed_tokens.weight
    ours = model.tok_embeddings.weight
    assert vocab.padded_size % 64 == 0 and ours.shape[0] == vocab.padded_size
    for name in ("image", "audio_1", "grid"):
        r = vocab.range(name)
        assert torch.allclose(ours[r.start:r.stop], emb.mean(0).expand(r.size, -1), atol=1e-6)
    assert torch.equal(ours[vocab.special("<bos>")], emb[1])
    assert torch.equal(ours[vocab.special("<eos>")], emb[2])
    head = model.output.weight
    assert torch.equal(head[vocab.range("text").start + 5], hf.lm_head.weight[5])


def test_unsupported_models_are_refused(tmp_path):
    save_hf(tmp_path, "Llama", num_attention_heads=4, attention_bias=True)
    with pytest.raises(ConvertError, match="attention_bias"):
        convert_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConvertError, match="not a Llama-architecture"):
        convert_hf(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="config.json: missing"):
        convert_hf(tmp_path / "empty")
    with pytest.raises(ConvertError, match="no such folder"):
        convert_hf(tmp_path / "nowhere")
