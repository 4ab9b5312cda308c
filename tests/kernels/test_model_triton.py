"""End to end: the `debug` model on the triton backend (every kernel: RMSNorm, RoPE, flash
attention, decode attention) reproduces the float64 model's logits and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer


def make_models(device, **overrides) -> tuple[Transformer, Transformer]:
    """(fp32 model on the triton backend, the same weights in float64 on sdpa)."""
    args = ModelArgs.from_name("debug", vocab_size=256, **overrides)
    model = Transformer(args, attn_backend="triton").to(device)
    ref = copy.deepcopy(model).double().cpu()
    ref.attn_backend = "sdpa"
    return model, ref


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach()).abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_logits_and_gradients(packed, seeded, device):
    rng, oracle = seeded
    model, ref = make_models(device, qk_norm=True)
    t = rng.choice((17, 37, 77))
    idx = torch.randint(0, 256, (2, t))
    doc_ids = None
    if packed:  # documents of random lengths, a 1-token one included
        cuts = sorted(rng.sample(range(1, t - 1), 3))
        doc_ids = torch.zeros(2, t, dtype=torch.long)
        for c in cuts + [cuts[0] + 1]:
            doc_ids[:, c:] += 1
    case = f"T={t} docs={None if doc_ids is None else doc_ids[0].tolist()} seed={oracle.seed}"
    logits = model(idx.to(device), doc_ids=None if doc_ids is None else doc_ids.to(device))
    expected = ref(idx, doc_ids=doc_ids)
    assert rel_err(logits, expected) <= 1e-5, case
    dlogits = torch.randn(expected.shape, dtype=torch.float64)
    logits.backward(dlogits.to(logits))
    expected.backward(dlogits)
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(p.grad, ref_grads[name].grad) <= 1e-5, f"{name}: {case}"


def test_cached_generation(seeded, device):
    """Prefill with a cache, then one token at a time, rows at different lengths."""
    rng, oracle = seeded
    model, ref = make_models(device)
    lens = torch.tensor([rng.randint(1, 9), 9, rng.randint(1, 9)])
    idx = torch.randint(0, 256, (3, 14))
    with torch.no_grad():
        model.setup_cache(batch_size=3, max_seq_len=32)
        got = [model(idx[:, :9].to(device), input_pos=torch.arange(9, device=device).expand(3, 9))]
        for j in range(5):
            pos = (lens + j)[:, None]
            got.append(model(idx[:, 9 + j:10 + j].to(device), input_pos=pos.to(device)))
        for i in range(3):  # the reference: each row alone, no cache
            row = torch.cat([idx[i, :lens[i]], idx[i, 9:]])[None]
            expected = ref(row)[0, lens[i] - 1:]
            steps = torch.stack([got[0][i, lens[i] - 1]] + [g[i, 0] for g in got[1:]])
            assert rel_err(steps, expected) <= 1e-5, f"row {i}, lens {lens.tolist()}, " \
                                                     f"seed {oracle.seed}"
