"""`kernels.attention` on every local backend against a float64 reference written with explicit
loops, and backend selection."""

from __future__ import annotations

import math

import pytest
import torch

from omnitok import OmnitokError
from omnitok.kernels import attention, default_backend, describe_backend, resolve_backend

# triton runs here under the interpreter (tests/kernels/conftest.py) or on a GPU
LOCAL = ["sdpa", "triton"]


def reference(q, k, v, allowed):
    """allowed(b, i, j) -> bool; plain float64 softmax attention with GQA by head grouping."""
    b_, h_, t_, d = q.shape
    group = h_ // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            kh, vh = k[b, h // group].double(), v[b, h // group].double()
            scores = q[b, h].double() @ kh.T / math.sqrt(d)
            for i in range(t_):
                mask = torch.tensor([allowed(b, i, j) for j in range(k.shape[2])])
                out[b, h, i] = torch.softmax(scores[i].masked_fill(~mask, -math.inf), 0) @ vh
    return out


def rand(b, h, hkv, t, s, d=16):
    return torch.randn(b, h, t, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)


def max_err(a, ref):
    return float((a.double() - ref).abs().max())


@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (8, 1)])
def test_causal(h, hkv, backend):
    q, k, v = rand(2, h, hkv, 13, 13)
    assert max_err(attention(q, k, v, backend=backend),
                   reference(q, k, v, lambda b, i, j: j <= i)) < 1e-5


@pytest.mark.parametrize("backend", LOCAL)
def test_not_causal_and_bottom_right_causal(backend):
    q, k, v = rand(1, 4, 2, 5, 11)
    assert max_err(attention(q, k, v, causal=False, backend=backend),
                   reference(q, k, v, lambda b, i, j: True)) < 1e-5
    # q_len != kv_len: the last query sees every key (flash-attn's convention)
    assert max_err(attention(q, k, v, backend=backend),
                   reference(q, k, v, lambda b, i, j: j <= i + 6)) < 1e-5
    # more queries than keys: the first ones see nothing and get zeros
    q, k, v = rand(1, 4, 2, 11, 5)
    assert max_err(attention(q, k, v, backend=backend),
                   reference(q, k, v, lambda b, i, j: j <= i - 6).nan_to_num()) < 1e-5


@pytest.mark.parametrize("backend", LOCAL)
def test_documents(backend):
    doc = torch.tensor([[0, 0, 0, 1, 2, 2, 2, 2, 3], [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    q, k, v = rand(2, 4, 2, 9, 9)
    ref = reference(q, k, v, lambda b, i, j: j <= i and doc[b, i] == doc[b, j])
    assert max_err(attention(q, k, v, doc_ids=doc, backend=backend), ref) < 1e-5


# (input dtype, autocast dtype, tolerance of outputs, of gradients): bf16 inputs and bf16
# autocast take the float32 path on the CPU, so only the rounding of inputs and outputs remains
CHUNKED_CASES = [(torch.float32, None, 1e-5, 1e-4), (torch.bfloat16, None, 2e-2, 5e-2),
                 (torch.float32, torch.bfloat16, 1e-5, 1e-4)]


@pytest.mark.parametrize("dtype,autocast,tol,grad_tol", CHUNKED_CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_long_packed_rows_take_the_chunked_path(causal, dtype, autocast, tol, grad_tol):
    """Rows longer than two DOC_CHUNKs go through `document_chunked_attention`: outputs and
    gradients match float64 softmax attention under a dense document mask, in q's dtype."""
    from omnitok.kernels import dispatch

    g = torch.Generator().manual_seed(3)
    t = 2 * dispatch.DOC_CHUNK + 89
    lengths = [[7, 300, 31, 40, 3], [150, 1, 128, 100, 2]]  # documents cross chunk edges
    doc = torch.tensor([sum(([n] * m for n, m in enumerate(row)), [])[:t] + [9] * (t - sum(row))
                        for row in lengths])
    q, k, v = (torch.randn(2, h, t, 16, generator=g).to(dtype).requires_grad_()
               for h in (4, 2, 2))
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = attention(q, k, v, causal=causal, doc_ids=doc, backend="sdpa")
    assert out.dtype == dtype
    dout = torch.randn(out.shape, generator=g).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    allowed = doc[:, :, None] == doc[:, None, :]
    if causal:
        allowed &= torch.ones(t, t, dtype=torch.bool).tril()
    scores = q64 @ k64.repeat_interleave(2, 1).transpose(-1, -2) / 4.0
    ref = scores.masked_fill(~allowed[:, None], -math.inf).softmax(-1) @ v64.repeat_interleave(2, 1)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    assert max_err(out, ref) < tol
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.dtype == dtype
        assert max_err(grad, ref_grad) < grad_tol


@pytest.mark.parametrize("backend", LOCAL)
def test_cache_positions(backend):
    q_pos = torch.tensor([[3, 4], [9, 10]])
    q, k, v = rand(2, 4, 2, 2, 12)
    ref = reference(q, k, v, lambda b, i, j: j <= q_pos[b, i])
    assert max_err(attention(q, k, v, q_pos=q_pos, backend=backend), ref) < 1e-5


def test_backend_selection(monkeypatch):
    assert resolve_backend(None) == "sdpa"
    assert default_backend("cpu") == "sdpa"
    assert default_backend("cuda") == "triton"  # no GPU needed to decide
    assert resolve_backend(None, "cuda:0") == "triton"
    with pytest.raises(OmnitokError, match="unknown attention backend 'cuda'"):
        resolve_backend("cuda")
    with pytest.raises(OmnitokError, match="'flash' needs a CUDA device"):
        resolve_backend("flash", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"
    assert "interpreter" in describe_backend("triton", "cpu")
    assert describe_backend(None, "cpu").startswith("attention: sdpa")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(OmnitokError, match="runs on CUDA, not cpu .*TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(OmnitokError, match="runs on CUDA"):
        attention(*rand(1, 2, 2, 3, 3), backend="triton")


def test_triton_cached_attention_has_no_backward():
    q, k, v = (x.requires_grad_() for x in rand(1, 2, 2, 1, 4))
    with pytest.raises(OmnitokError, match="no backward"):
        attention(q, k, v, q_pos=torch.tensor([[3]]), backend="triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cached_low_precision_attention_on_cpu(dtype):
    """The float32-score path for cached bf16/fp16 decode: no worse than SDPA's own rounding."""
    torch.manual_seed(0)
    b, h, hk, t, s, d = 3, 6, 2, 2, 37, 16
    q, k, v = (torch.randn(b, n, m, d, dtype=torch.float64)
               for n, m in ((h, t), (hk, s), (hk, s)))
    q_pos = torch.tensor([[5, 6], [30, 31], [0, 1]])
    from omnitok.kernels import reference as ref_ops

    ref = ref_ops.attention(q, k, v, q_pos=q_pos)
    got = attention(q.to(dtype), k.to(dtype), v.to(dtype), q_pos=q_pos, backend="sdpa")
    low = ref_ops.attention(q.to(dtype).double(), k.to(dtype).double(),
                              v.to(dtype).double(), q_pos=q_pos).to(dtype)
    err = (got.double() - ref).abs().max()
    assert err <= 2 * (low.double() - ref).abs().max() + 1e-6
