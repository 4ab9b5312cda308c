"""The decoder transformer: presets, packed documents, loss, and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from omnitok.model.config import PRESETS, ConfigError, ModelArgs
from omnitok.model.loss import IGNORE, lm_loss, token_losses
from omnitok.model.transformer import Transformer, document_starts


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    args = ModelArgs.from_name(name, vocab_size=1024)
    assert args.n_heads % args.n_kv_heads == 0
    assert args.head_dim * args.n_heads >= args.dim // 2


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_num_params_matches_module(tie, qk_norm):
    args = ModelArgs.from_name("debug", vocab_size=256, tie_embeddings=tie, qk_norm=qk_norm)
    model = Transformer(args)
    assert sum(p.numel() for p in model.parameters()) == args.num_params()


def test_unknown_preset_and_bad_configs():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'.*debug"):
        ModelArgs.from_name("huge")
    with pytest.raises(ConfigError, match="not a multiple"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="unknown model config keys: bogus"):
        ModelArgs.from_dict({"dim": 64, "bogus": 1})
    small = ModelArgs.from_name("small")
    assert ModelArgs.from_dict(small.to_dict()) == small


def test_document_starts():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3], [5, 5, 5, 5, 5, 5, 5, 5]])
    expected = torch.tensor([[0, 0, 0, 3, 3, 5, 6, 6], [0] * 8])
    assert torch.equal(document_starts(doc), expected)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_packed_documents_equal_separate_runs(qk_norm):
    """Two rows, each packing several documents (a 1-token one too), match per-document runs."""
    args = ModelArgs.from_name("debug", vocab_size=256, qk_norm=qk_norm)
    model = Transformer(args).eval()
    lengths = [[9, 1, 14], [5, 19]]
    docs = [[torch.randint(0, 256, (1, n)) for n in row] for row in lengths]
    idx = torch.stack([torch.cat(row, 1)[0] for row in docs])
    doc_ids = torch.stack([torch.cat([torch.full((n,), d) for d, n in enumerate(row)])
                           for row in lengths])
    with torch.no_grad():
        packed = model(idx, doc_ids=doc_ids)
        alone = torch.stack([torch.cat([model(d)[0] for d in row]) for row in docs])
        plain = model(idx)
    assert rel_err(packed, alone) <= 1e-5
    assert rel_err(plain, alone) > 1e-3  # without doc_ids, documents do see each other


def test_packed_gradients_do_not_cross_documents():
    args = ModelArgs.from_name("debug", vocab_size=128)
    model = Transformer(args)
    idx = torch.randint(0, 128, (1, 12))
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    x = model.tok_embeddings(idx).detach().requires_grad_(True)
    # run the blocks by hand so we can differentiate w.r.t. the input embeddings
    pos = torch.arange(12)[None] - document_starts(doc_ids)
    cos, sin = model.rope[pos].unbind(2)
    h = x
    for layer in model.layers:
        h = layer(h, cos[:, None], sin[:, None], doc_ids, None, "sdpa")
    h[0, 7:].sum().backward()  # outputs of document 1 only
    assert x.grad[0, :7].abs().max() == 0
    assert x.grad[0, 7:].abs().max() > 0


def test_token_losses_match_float64_reference():
    logits = torch.randn(2, 5, 37) * 3
    targets = torch.randint(0, 37, (2, 5))
    targets[0, 1] = targets[1, 4] = IGNORE
    z = 1e-2
    got = token_losses(logits, targets, z_loss=z)
    lp = logits.double().log_softmax(-1)
    lse = logits.double().logsumexp(-1)
    for b in range(2):
        for t in range(5):
            if targets[b, t] == IGNORE:
                assert got[b, t] == 0
                continue
            ref = -lp[b, t, targets[b, t]] + z * lse[b, t] ** 2
            assert math.isclose(float(got[b, t]), float(ref), rel_tol=1e-5)
    mean = lm_loss(logits, targets, z_loss=z)
    assert math.isclose(float(mean), float(got.sum() / 8), rel_tol=1e-6)


def test_training_step_reduces_loss():
    args = ModelArgs.from_name("debug", vocab_size=64, qk_norm=True)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 64, (4, 33))
    losses = []
    for _ in range(20):
        loss = lm_loss(model(idx[:, :-1]), idx[:, 1:], z_loss=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_sequence_longer_than_context_is_refused():
    model = Transformer(ModelArgs.from_name("debug", vocab_size=64, max_seq_len=16))
    with pytest.raises(ValueError, match="exceeds max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
