"""Incremental decoding with the static KV cache reproduces the full forward pass."""

from __future__ import annotations

import pytest
import torch

from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("qk_norm,tie", [(False, False), (True, True)])
@pytest.mark.parametrize("prefill", [1, 6])
def test_incremental_equals_full(qk_norm, tie, prefill):
    args = ModelArgs.from_name("debug", vocab_size=300, qk_norm=qk_norm, tie_embeddings=tie)
    model = Transformer(args).eval()
    idx = torch.randint(0, 300, (2, 23))
    with torch.no_grad():
        full = model(idx)
        model.setup_cache(batch_size=2, max_seq_len=64)
        steps = [model(idx[:, :prefill], input_pos=torch.arange(prefill))]
        for t in range(prefill, idx.shape[1]):
            steps.append(model(idx[:, t:t + 1], input_pos=torch.tensor([t])))
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5


def test_rows_at_different_positions():
    """Prompts of different lengths share one batch (right-padded prefill, per-row positions)."""
    args = ModelArgs.from_name("debug", vocab_size=100)
    model = Transformer(args).eval()
    prompts = [torch.randint(0, 100, (n,)) for n in (3, 9, 5)]
    cont = torch.randint(0, 100, (3, 4))  # 4 more tokens per row, fed one at a time
    t = max(len(p) for p in prompts)
    batch = torch.zeros(3, t, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, :len(p)] = p
    lens = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        model.setup_cache(batch_size=3, max_seq_len=32)
        pre = model(batch, input_pos=torch.arange(t).expand(3, t))
        got = [pre[torch.arange(3), lens - 1]]
        for j in range(4):
            got.append(model(cont[:, j:j + 1], input_pos=(lens + j)[:, None])[:, 0])
        model.clear_cache()
        for i, p in enumerate(prompts):
            ref = model(torch.cat([p, cont[i]])[None])[0, len(p) - 1:]
            assert rel_err(torch.stack([g[i] for g in got]), ref) <= 1e-5


def test_cache_longer_than_context_is_refused():
    model = Transformer(ModelArgs.from_name("debug", vocab_size=64, max_seq_len=16))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model.setup_cache(1, 17)
    model.setup_cache(1, 16)
    with pytest.raises(ValueError, match="pass input_pos"):
        model(torch.zeros(1, 2, dtype=torch.long))
