"""Fused RMSNorm and RoPE, forward and backward, against float64 references."""

from __future__ import annotations

import pytest
import torch

from omnitok.kernels import reference
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import rope_cache

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grads(fn, inputs, dy):
    """fn(*inputs) and the gradients of <fn(*inputs), dy> w.r.t. the inputs."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    y = fn(*inputs)
    y.backward(dy.to(y.dtype))
    return [y] + [x.grad for x in inputs]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_rms_norm(dtype, seeded, device):
    from omnitok.kernels.rmsnorm import rms_norm

    rng, oracle = seeded
    shape = (rng.choice((1, 3)), rng.choice((1, 17, 77)), rng.choice((16, 64, 77, 300)))
    oracle.case = f"x {shape}"
    x = torch.randn(shape) * 3
    w = 1 + torch.randn(shape[-1]) * 0.1
    dy = torch.randn(shape)
    eps = 1e-5
    got = grads(lambda a, b: rms_norm(a, b, eps), [x.to(device, dtype), w.to(device, dtype)], dy)
    ref64 = grads(lambda a, b: reference.rms_norm(a, b, eps), [x.double(), w.double()], dy)
    low = grads(lambda a, b: reference.rms_norm(a, b, eps), [x.to(dtype), w.to(dtype)], dy)
    for name, g, r, lo in zip(("y", "dx", "dw"), got, ref64, low):
        oracle.check(name, g, r, None if dtype == torch.float32 else lo)


def test_rms_norm_mixed_dtypes_and_strided_rows(seeded, device):
    """bf16 activations with an fp32 weight (output fp32, as torch promotes); rows that are a
    strided view (the model's per-head QK-norm input)."""
    from omnitok.kernels.rmsnorm import rms_norm

    _, oracle = seeded
    oracle.case = "bf16 x, fp32 w, strided"
    x = torch.randn(2, 9, 3 * 64)[..., :128].reshape(2, 9, 2, 64)  # non-contiguous rows
    w = 1 + torch.randn(64) * 0.1
    y = rms_norm(x.to(device, torch.bfloat16), w.to(device), 1e-6)
    assert y.dtype == torch.float32
    ref = reference.rms_norm(x.bfloat16().double(), w.double(), 1e-6)
    oracle.check("y", y, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_rope(dtype, seeded, device):
    """Model tables (per-row positions, as with packed documents or a KV cache), fwd and dx."""
    from omnitok.kernels.rope import apply_rope

    rng, oracle = seeded
    b, h, t, d = rng.choice((1, 2)), rng.choice((1, 3)), rng.choice((1, 17, 77)), \
        rng.choice((16, 64, 128))
    oracle.case = f"x ({b}, {h}, {t}, {d})"
    table = rope_cache(ModelArgs(dim=d, n_heads=1, max_seq_len=512)).double()
    pos = torch.randint(0, 512, (b, t))
    cos, sin = table[pos].unbind(2)  # (B, T, D) each
    cos, sin = cos[:, None], sin[:, None]
    x, dy = torch.randn(b, h, t, d), torch.randn(b, h, t, d)

    def run(fn, dt):
        c, s = cos.to(device, dt), sin.to(device, dt)
        return grads(lambda a: fn(a, c, s), [x.to(device, dt)], dy.to(device))

    got = run(apply_rope, dtype)
    ref64 = run(reference.apply_rope, torch.float64)
    low = run(reference.apply_rope, dtype)
    for name, g, r, lo in zip(("y", "dx"), got, ref64, low):
        oracle.check(name, g, r.cpu(), None if dtype == torch.float32 else lo.cpu())


def test_rope_broadcast_table_and_strided_input(seeded, device):
    """cos/sin shared by the batch (1, 1, T, D); x a transposed (B, T, H, D) projection."""
    from omnitok.kernels.rope import apply_rope

    _, oracle = seeded
    oracle.case = "broadcast table"
    table = rope_cache(ModelArgs(dim=64, n_heads=1, max_seq_len=64))
    cos, sin = table[:33].unbind(1)
    cos, sin = cos[None, None].to(device), sin[None, None].to(device)
    x = torch.randn(2, 33, 4, 64, device=device).transpose(1, 2)
    oracle.check("y", apply_rope(x, cos, sin),
                 reference.apply_rope(x.double(), cos.double(), sin.double()))
