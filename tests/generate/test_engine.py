"""Cached decoding produces what recomputing the whole sequence would; sampling respects masks."""

from __future__ import annotations

import pytest
import torch

from omnitok.generate.engine import generate_tokens
from omnitok.generate.sampling import sample
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_name("debug", vocab_size=128, qk_norm=True)).eval()


def test_greedy_matches_full_recompute(model):
    prompt = [5, 17, 99, 3]
    got = generate_tokens(model, prompt, 12, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt):]


def test_seed_reproduces_and_mask_holds(model):
    allowed = torch.zeros(128, dtype=torch.bool)
    allowed[40:60] = True
    a = generate_tokens(model, [1, 2, 3], 30, allowed=allowed, seed=7)
    b = generate_tokens(model, [1, 2, 3], 30, allowed=allowed, seed=7)
    c = generate_tokens(model, [1, 2, 3], 30, allowed=allowed, seed=8)
    assert a == b and a != c
    assert all(40 <= t < 60 for t in a)


def test_stop_token_ends_generation(model):
    first = generate_tokens(model, [1, 2, 3], 1, temperature=0)[0]
    assert generate_tokens(model, [1, 2, 3], 10, temperature=0, stop=[first]) == [first]


def test_context_limit(model):
    with pytest.raises(ValueError, match="exceed the context"):
        generate_tokens(model, list(range(500)), 20)
    with pytest.raises(ValueError, match="empty"):
        generate_tokens(model, [], 2)


def test_top_k_and_top_p_against_reference():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(sample(logits, top_p=1e-6), logits.argmax(-1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, top_k=5, generator=g) for _ in range(200)])
    top5 = logits.topk(5).indices
    assert all((draws[:, b, None] == top5[b]).any(-1).all() for b in range(4))
    # top-p keeps the smallest prefix of sorted ids whose mass reaches p
    probs = logits.softmax(-1)
    draws = torch.stack([sample(logits, top_p=0.5, generator=g) for _ in range(200)])
    for b in range(4):
        order = probs[b].argsort(descending=True)
        k = int((probs[b][order].cumsum(0) < 0.5).sum()) + 1
        assert set(draws[:, b].tolist()) <= set(order[:k].tolist())
