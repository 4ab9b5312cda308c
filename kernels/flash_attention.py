"""Flash attention (FlashAttention-2) in Triton: causal or not, GQA, packed documents.

q: (B, H, T, D); k, v: (B, Hkv, S, D), H % Hkv == 0 (K/V are never repeated in memory). Causal
masks are aligned bottom-right (query i sees keys j <= i + S - T). `doc_ids` (B, T), T == S,
confines each query to its document (a contiguous run of equal ids).

Forward: one program per (block of BLOCK_M queries, batch*head); online softmax in fp32 over
blocks of BLOCK_N keys; the log-sum-exp (base 2) is saved for the backward. The keys a query
block visits are split into three ranges: [lo, a) masked, [a, b) seen by every query of the
block (no mask computed), [b, hi) masked; keys outside [lo, hi) (above the causal diagonal, in
other documents) are never loaded. The backward is in `flash_attention_bwd`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from omnitok.kernels import reference
from omnitok.kernels.triton_utils import (
    block_d,
    bucket,
    check_dtype,
    dot_precision,
    last_dim_contiguous,
    load_kv_tile,
    meta,
    out_dtype,
    tuned,
    upcast,
)

LOG2E = 1.4426950408889634

_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4),
                         (64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 8, 4), (64, 128, 4, 2)]
]
_FWD_KEY = ["BUCKET_T", "BUCKET_S", "BLOCK_D", "CAUSAL", "DOCS"]


@triton.jit
def clamp_ranges(lo, a, b, hi, BLOCK: tl.constexpr):
    """Align [lo, hi) outward and the unmasked [a, b) inward to BLOCK; keep lo <= a <= b <= hi."""
    lo = lo // BLOCK * BLOCK
    hi = tl.maximum(hi, lo)
    a = tl.minimum(tl.maximum((a + BLOCK - 1) // BLOCK * BLOCK, lo), hi)
    b = tl.minimum(tl.maximum(b // BLOCK * BLOCK, a), hi)
    return lo, a, b, hi


@triton.jit
def key_ranges(START, END, m0, T, S, CAUSAL: tl.constexpr, DOCS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [lo, hi) that some query in [m0, m0 + BLOCK_M) sees; [a, b) those all of them see."""
    m_last = tl.minimum(m0 + BLOCK_M, T) - 1
    off = S - T
    lo = m0 * 0
    a = m0 * 0
    if CAUSAL:
        hi = tl.minimum(m_last + off + 1, S)
        b = tl.minimum(m0 + off + 1, S)
    else:
        hi = m0 * 0 + S
        b = m0 * 0 + S
    if DOCS:  # documents are runs: the block's first row starts earliest, its last ends latest
        lo = tl.load(START + m0)
        a = tl.load(START + m_last)
        b = tl.minimum(b, tl.load(END + m0))
        hi = tl.minimum(hi, tl.load(END + m_last))
    return clamp_ranges(lo, a, b, hi, BLOCK_N)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_b, start_q,
               offs_m, offs_d, lo, hi, S, D, off, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOCS: tl.constexpr,
               BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    d_ok = offs_d < D
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < S
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, offs_n, offs_d, kv_mask, stride_ks, stride_vs, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (M, N), base 2
        if MASKED:
            ok = n_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off)
            if DOCS:
                start_k = tl.load(start_b + offs_n, mask=n_ok, other=-2)
                ok = ok & (start_k[None, :] == start_q[:, None])
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key so far
        p = tl.exp2(qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@tuned(_FWD_CONFIGS, _FWD_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, START, END,
                stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_ot,
                H, T, S, D, GROUP, qk_scale, BUCKET_T, BUCKET_S,
                CAUSAL: tl.constexpr, DOCS: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:  # the longest rows first: better tail balance
        pid_m = tl.num_programs(0) - 1 - pid_m
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    q_mask = m_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    v_base = V + b * stride_vb + (h // GROUP) * stride_vh
    start_b = START + b * T
    if DOCS:
        start_q = tl.load(start_b + offs_m, mask=m_ok, other=-1)
    else:
        start_q = offs_m
    lo, a, mid, hi = key_ranges(start_b, END + b * T, m0, T, S, CAUSAL, DOCS, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    off = S - T
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_b,
                               start_q, offs_m, offs_d, lo, a, S, D, off, qk_scale,
                               True, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_b,
                               start_q, offs_m, offs_d, a, mid, S, D, off, qk_scale,
                               False, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, start_b,
                               start_q, offs_m, offs_d, mid, hi, S, D, off, qk_scale,
                               True, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)

    seen = l_i > 0.0  # a query that sees no key: output 0, lse +inf (so its P is 0 in the bwd)
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.log2(l_safe), float("inf"))
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot
             + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=q_mask)
    tl.store(LSE + bh * T + offs_m, lse, mask=m_ok)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
             starts: torch.Tensor | None, ends: torch.Tensor | None,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: (o (B, H, T, D), lse (B, H, T) fp32, base 2)."""
    bsz, h, t, d = q.shape
    s = k.shape[2]
    o = torch.empty(q.shape, dtype=out_dtype(q.dtype), device=q.device)
    lse = torch.empty(bsz, h, t, dtype=torch.float32, device=q.device)
    docs = starts is not None
    dummy = lse  # START/END are never read without documents

    def grid(m):
        return (triton.cdiv(t, m["BLOCK_M"]), bsz * h)

    _fwd_kernel[grid](
        q, k, v, o, lse, starts if docs else dummy, ends if docs else dummy,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        h, t, s, d, h // k.shape[1], scale * LOG2E, bucket(t), bucket(s),
        CAUSAL=causal, DOCS=docs, BLOCK_D=block_d(d), UPCAST=upcast(q.dtype),
        PRECISION=dot_precision(q.dtype), **meta(BLOCK_M=64, BLOCK_N=128))
    return o.to(q.dtype), lse


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, doc_ids, scale):
        starts, ends = reference.document_bounds(doc_ids) if doc_ids is not None else (None, None)
        o, lse = _forward(q, k, v, causal, starts, ends, scale)
        ctx.save_for_backward(q, k, v, o, lse, starts, ends)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        from omnitok.kernels.flash_attention_bwd import backward

        q, k, v, o, lse, starts, ends = ctx.saved_tensors
        dq, dk, dv = backward(last_dim_contiguous(do), q, k, v, o, lse, ctx.causal, starts, ends,
                              ctx.scale)
        return dq, dk, dv, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    doc_ids: torch.Tensor | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k, v (B, Hkv, S, D) -> (B, H, T, D); differentiable.

    causal: bottom-right aligned (query i sees keys j <= i + S - T; a query that sees no key
    gets zeros). doc_ids: (B, T) document of each token, T == S. scale: default 1/sqrt(D).
    """
    check_dtype(q, k, v)
    if q.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"expected q (B, H, T, D), k and v (B, Hkv, S, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if doc_ids is not None and (doc_ids.shape != (q.shape[0], q.shape[2]) or
                                q.shape[2] != k.shape[2]):
        raise ValueError(f"doc_ids {tuple(doc_ids.shape)} needs T == S and shape (B, T)")
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    if q.shape[2] == 0 or k.shape[2] == 0:  # nothing to launch; zeros (or empty) either way
        return reference.attention(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _FlashAttention.apply(q, k, v, causal, doc_ids, scale)
