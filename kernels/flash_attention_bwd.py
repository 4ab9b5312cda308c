"""Flash attention backward (FlashAttention-2): Delta preprocess, dK/dV pass, dQ pass.

Delta = rowsum(O * dO). dK, dV: one program per (block of keys, batch*kv-head) walks the query
blocks of every query head of its group, so GQA gradients are summed without atomics. dQ: one
program per (block of queries, batch*head) walks its keys. Both passes skip the same blocks as
the forward and split the rest into masked and unmasked ranges. P is recomputed from the saved
log-sum-exp (base 2; +inf for queries that see no key, so their P is 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnitok.kernels.flash_attention import LOG2E, clamp_ranges, key_ranges
from omnitok.kernels.triton_utils import (
    INTERPRET,
    block_d,
    bucket,
    dot_precision,
    load_kv_tile,
    meta,
    out_dtype,
    tuned,
    upcast,
)

_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 4),
                         (64, 128, 4, 2)]
]
_DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4),
                         (128, 128, 8, 2)]
]
_KEY = ["BUCKET_T", "BUCKET_S", "BLOCK_D", "CAUSAL", "DOCS"]


@triton.jit
def _delta_kernel(OUT, DO, DELTA, stride_ob, stride_oh, stride_ot,
                  stride_db, stride_dh, stride_dt, H, T, D,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < T)[:, None] & (offs_d < D)[None, :]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot
                + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dt
                 + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def query_ranges(START, END, n0, T, S, CAUSAL: tl.constexpr, DOCS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries [lo, hi) that see some key in [n0, n0 + BLOCK_N); [a, b) those that see all."""
    n_last = tl.minimum(n0 + BLOCK_N, S) - 1
    off = S - T
    hi = n0 * 0 + T
    b = n0 * 0 + T
    if CAUSAL:
        lo = tl.maximum(n0 - off, 0)
        a = n_last - off
    else:
        lo = n0 * 0
        a = n0 * 0
    if DOCS:
        lo = tl.maximum(lo, tl.load(START + n0))
        a = tl.maximum(a, tl.load(START + n_last))
        b = tl.load(END + n0)
        hi = tl.load(END + n_last)
    return clamp_ranges(lo, a, b, hi, BLOCK_M)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_b, start_k,
                stride_qt, stride_dot, offs_n, offs_d, lo, hi, T, D, off, qk_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOCS: tl.constexpr,
                BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    d_ok = offs_d < D
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < T
        mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=mask,
                     other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (N, M)
        p_t = tl.exp2(qk_t - lse[None, :])
        if MASKED:
            ok = m_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[:, None] <= offs_m[None, :] + off)
            if DOCS:
                start_q = tl.load(start_b + offs_m, mask=m_ok, other=-1)
                ok = ok & (start_k[:, None] == start_q[None, :])
            p_t = tl.where(ok, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (N, M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@tuned(_BWD_CONFIGS, _KEY)
@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, START, END,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                 stride_vb, stride_vh, stride_vs, stride_db, stride_dh, stride_dt,
                 stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
                 H, T, S, D, GROUP, scale, qk_scale, BUCKET_T, BUCKET_S,
                 CAUSAL: tl.constexpr, DOCS: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n0 = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    hkv = H // GROUP
    b = bhk // hkv
    hk = bhk % hkv
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n < S)[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :],
                mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    start_b = START + b * T
    if DOCS:
        start_k = tl.load(start_b + offs_n, mask=offs_n < S, other=-2)
    else:
        start_k = offs_n
    lo, a, mid, hi = query_ranges(start_b, END + b * T, n0, T, S, CAUSAL, DOCS, BLOCK_M, BLOCK_N)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    off = S - T
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_db + h * stride_dh
        row = (b * H + h) * T
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + row, DELTA + row, start_b,
                             start_k, stride_qt, stride_dt, offs_n, offs_d, lo, a, T, D, off,
                             qk_scale, True, CAUSAL, DOCS, BLOCK_M, UPCAST, PRECISION)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + row, DELTA + row, start_b,
                             start_k, stride_qt, stride_dt, offs_n, offs_d, a, mid, T, D, off,
                             qk_scale, False, CAUSAL, DOCS, BLOCK_M, UPCAST, PRECISION)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + row, DELTA + row, start_b,
                             start_k, stride_qt, stride_dt, offs_n, offs_d, mid, hi, T, D, off,
                             qk_scale, True, CAUSAL, DOCS, BLOCK_M, UPCAST, PRECISION)
    tl.store(DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks
             + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvs
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, start_b, start_q,
              offs_m, offs_d, lo, hi, S, D, off, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOCS: tl.constexpr,
              BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    d_ok = offs_d < D
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < S
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, offs_n, offs_d, kv_mask, stride_ks, stride_vs, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if MASKED:
            ok = n_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off)
            if DOCS:
                start_k = tl.load(start_b + offs_n, mask=n_ok, other=-2)
                ok = ok & (start_k[None, :] == start_q[:, None])
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@tuned(_DQ_CONFIGS, _KEY)
@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, START, END,
               stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
               stride_vb, stride_vh, stride_vs, stride_db, stride_dh, stride_dt,
               stride_dqb, stride_dqh, stride_dqt,
               H, T, S, D, GROUP, scale, qk_scale, BUCKET_T, BUCKET_S,
               CAUSAL: tl.constexpr, DOCS: tl.constexpr, BLOCK_D: tl.constexpr,
               UPCAST: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    mask = m_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dt
                 + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=m_ok, other=0.0)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    v_base = V + b * stride_vb + (h // GROUP) * stride_vh
    start_b = START + b * T
    if DOCS:
        start_q = tl.load(start_b + offs_m, mask=m_ok, other=-1)
    else:
        start_q = offs_m
    lo, a, mid, hi = key_ranges(start_b, END + b * T, m0, T, S, CAUSAL, DOCS, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    off = S - T
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, start_b, start_q,
                   offs_m, offs_d, lo, a, S, D, off, qk_scale,
                   True, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, start_b, start_q,
                   offs_m, offs_d, a, mid, S, D, off, qk_scale,
                   False, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, start_b, start_q,
                   offs_m, offs_d, mid, hi, S, D, off, qk_scale,
                   True, CAUSAL, DOCS, BLOCK_N, UPCAST, PRECISION)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt
             + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=mask)


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             o: torch.Tensor, lse: torch.Tensor, causal: bool, starts: torch.Tensor | None,
             ends: torch.Tensor | None, scale: float):
    """(dq, dk, dv) of flash attention, given dO (B, H, T, D) and the forward's o and lse."""
    bsz, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    bd = block_d(d)
    delta = torch.empty_like(lse)
    block_m = 128 if INTERPRET else 64
    _delta_kernel[(triton.cdiv(t, block_m), bsz * h)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], h, t, d, BLOCK_M=block_m, BLOCK_D=bd)
    dq, dk, dv = (torch.empty(x.shape, dtype=out_dtype(x.dtype), device=x.device)
                  for x in (q, k, v))
    docs = starts is not None
    starts, ends = (starts, ends) if docs else (lse, lse)  # never read without documents
    common = dict(CAUSAL=causal, DOCS=docs, BLOCK_D=bd, UPCAST=upcast(q.dtype),
                  PRECISION=dot_precision(q.dtype))
    scalars = (h, t, s, d, h // hkv, scale, scale * LOG2E, bucket(t), bucket(s))

    def kv_grid(m):
        return (triton.cdiv(s, m["BLOCK_N"]), bsz * hkv)

    _dkdv_kernel[kv_grid](q, k, v, do, lse, delta, dk, dv, starts, ends,
                          *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
                          *dk.stride()[:3], *dv.stride()[:3], *scalars, **common,
                          **meta(BLOCK_M=64, BLOCK_N=128))

    def q_grid(m):
        return (triton.cdiv(t, m["BLOCK_M"]), bsz * h)

    _dq_kernel[q_grid](q, k, v, do, lse, delta, dq, starts, ends,
                       *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
                       *dq.stride()[:3], *scalars, **common, **meta(BLOCK_M=64, BLOCK_N=128))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
