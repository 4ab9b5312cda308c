"""The blockwise cross-entropy + logsumexp that training uses, forward and backward, against
float64 math."""

from __future__ import annotations

import pytest
import torch

from omnitok.model.loss import _CrossEntropyLse, cross_entropy_lse

# (dtype, rtol of the per-row values, rtol of the gradient norm): bf16 logits are exact inputs
# (the math runs in float32), their gradient is rounded to bf16 (relative step 2^-8)
CASES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 8e-3), (torch.float64, 1e-12, 1e-12)]


def reference(logits: torch.Tensor, target: torch.Tensor, g_ce: torch.Tensor,
              g_lse: torch.Tensor):
    x = logits.detach().double().requires_grad_(True)
    lse = torch.logsumexp(x, dim=-1)
    ce = lse - x.gather(1, target[:, None])[:, 0]
    ((ce * g_ce.double()).sum() + (lse * g_lse.double()).sum()).backward()
    return ce.detach(), lse.detach(), x.grad


@pytest.mark.parametrize("dtype,rtol,grad_rtol", CASES)
@pytest.mark.parametrize("rows", [1, 7, 1000])  # one row per block, ragged blocks, one block
def test_values_and_gradient_match_float64(dtype, rtol, grad_rtol, rows):
    g = torch.Generator().manual_seed(rows)
    n, v = 123, 37 + rows % 5
    logits = (torch.randn(n, v, generator=g) * 4).to(dtype).requires_grad_(True)
    target = torch.randint(0, v, (n,), generator=g)
    g_ce, g_lse = torch.randn(n, generator=g), torch.randn(n, generator=g)
    ce, lse = _CrossEntropyLse.apply(logits, target, rows)
    ((ce * g_ce).sum() + (lse * g_lse).sum()).backward()
    ref_ce, ref_lse, ref_grad = reference(logits, target, g_ce, g_lse)
    assert ce.dtype == torch.promote_types(dtype, torch.float32)
    assert torch.allclose(ce.double(), ref_ce, rtol=rtol, atol=rtol)
    assert torch.allclose(lse.double(), ref_lse, rtol=rtol, atol=rtol)
    assert logits.grad.dtype == dtype
    err = (logits.grad.double() - ref_grad).norm() / ref_grad.norm()
    assert err < grad_rtol, float(err)


def test_only_the_loss_used_gets_a_gradient():
    logits = torch.randn(9, 11, dtype=torch.float64, requires_grad=True)
    target = torch.arange(9)
    ce, _ = cross_entropy_lse(logits, target)
    ce.sum().backward()  # lse unused: its gradient is zero, softmax - onehot remains
    expected = torch.softmax(logits.detach(), -1) - torch.eye(9, 11, dtype=torch.float64)
    assert torch.allclose(logits.grad, expected, rtol=1e-12, atol=1e-12)
