"""KV-cache attention for generation: split-KV (flash-decoding) over a preallocated cache.

q: (B, H, T, D), a few new queries per sequence (T = 1 when decoding, more for prefill with a
cache); k_cache, v_cache: (B, Hkv, S, D), of which sequence b uses the first entries only
(batched requests of different lengths). Query (b, t) sees cache entries j <= q_pos[b, t].

One program per (block of query rows, batch*kv-head, split of the cache). The rows of a block
are the GROUP query heads that share a kv head times the T new tokens, so each K/V tile is read
once for all of them. Each split writes its normalized partial output and log-sum-exp; a combine
pass weighs them. With one split the main kernel writes the output itself.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from omnitok.kernels.flash_attention import LOG2E
from omnitok.kernels.triton_utils import (
    INTERPRET,
    block_d,
    check_dtype,
    dot_precision,
    last_dim_contiguous,
    load_kv_tile,
    meta,
    out_dtype,
    parallelism,
    tuned,
    upcast,
)

_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn, w, s in [(64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 3), (32, 4, 4), (64, 8, 4)]
]
_INTERP_BLOCK_N = 32
GRANULE = _INTERP_BLOCK_N if INTERPRET else 256  # splits are multiples of every BLOCK_N above


@tuned(_CONFIGS, ["BLOCK_M", "BLOCK_D", "CHUNK", "DIRECT"])
@triton.jit
def _decode_kernel(Q, K, V, QPOS, OUT, O_PART, LSE_PART,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                   stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_ot,
                   HKV, T, S, D, GROUP, CHUNK, NUM_SPLITS, qk_scale,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DIRECT: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    bhk = tl.program_id(1)
    split = tl.program_id(2)
    b = bhk // HKV
    hk = bhk % HKV
    rows = GROUP * T
    offs_r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row r = t * GROUP + g
    r_ok = offs_r < rows
    t = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_mask = r_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + t[:, None] * stride_qt
                + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    pos = tl.load(QPOS + b * T + t, mask=r_ok, other=-1)
    lo = split * CHUNK
    hi = tl.minimum(tl.minimum(lo + CHUNK, S), tl.max(pos, 0) + 1)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, offs_n, offs_d, kv_mask, stride_ks, stride_vs, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(n_ok[None, :] & (offs_n[None, :] <= pos[:, None]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    if DIRECT:
        tl.store(OUT + b * stride_ob + h[:, None] * stride_oh + t[:, None] * stride_ot
                 + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=q_mask)
    else:
        part = (bhk * rows + offs_r) * NUM_SPLITS + split
        tl.store(O_PART + part[:, None] * D + offs_d[None, :], o, mask=q_mask)
        tl.store(LSE_PART + part, tl.where(seen, m_i + tl.log2(l_safe), float("-inf")),
                 mask=r_ok)


@triton.jit
def _combine_kernel(O_PART, LSE_PART, OUT, stride_ob, stride_oh, stride_ot,
                    HKV, T, D, GROUP, NUM_SPLITS, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)  # over B * HKV * rows
    rows = GROUP * T
    bhk = row // rows
    r = row % rows
    b = bhk // HKV
    h = (bhk % HKV) * GROUP + r % GROUP
    t = r // GROUP
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    lse = tl.load(LSE_PART + row * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # empty splits weigh 0
    total = tl.sum(w, 0)
    o = tl.load(O_PART + (row * NUM_SPLITS + offs_s)[:, None] * D + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(OUT + b * stride_ob + h * stride_oh + t * stride_ot + offs_d,
             out.to(OUT.dtype.element_ty), mask=d_ok)


def split_plan(programs: int, s: int, device: torch.device,
               num_splits: int | None = None) -> tuple[int, int]:
    """(number of splits, keys per split) for a cache of capacity s.

    Without `num_splits`: enough splits to give the device about two programs per SM, never
    splits shorter than GRANULE. Planned on the capacity, not the lengths (no host sync).
    """
    if num_splits is None:
        num_splits = max(1, min(triton.cdiv(s, GRANULE), 2 * parallelism(device) // programs))
    chunk = triton.cdiv(triton.cdiv(s, max(1, num_splits)), GRANULE) * GRANULE
    return triton.cdiv(s, chunk), chunk


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_lens: torch.Tensor | None = None, *, q_pos: torch.Tensor | None = None,
                     scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of q (B, H, T, D) over a KV cache (B, Hkv, S, D) -> (B, H, T, D). No autograd.

    cache_lens: (B,) filled entries of each sequence, the new tokens' keys included: query t
                sits at position cache_lens - T + t. Or q_pos (B, T) (or (T,)): each query's
                position; query (b, t) sees entries j <= q_pos[b, t]. Exactly one of the two.
    num_splits: split the cache into this many parts (default: enough to fill the device).
    """
    check_dtype(q, k_cache, v_cache)
    bsz, h, t, d = q.shape
    _, hkv, s, _ = k_cache.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != bsz or k_cache.shape[3] != d:
        raise ValueError(f"expected caches (B, Hkv, S, D) matching q {tuple(q.shape)}, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if h % hkv:
        raise ValueError(f"{h} query heads are not a multiple of {hkv} kv heads")
    if (cache_lens is None) == (q_pos is None):
        raise ValueError("give exactly one of cache_lens and q_pos")
    if q_pos is None:
        q_pos = cache_lens.reshape(bsz, 1) - t + torch.arange(t, device=q.device)
    q_pos = q_pos.expand(bsz, t).to(torch.int32).contiguous()
    q, k_cache, v_cache = (last_dim_contiguous(x) for x in (q, k_cache, v_cache))
    out = torch.empty(q.shape, dtype=out_dtype(q.dtype), device=q.device)
    if q.numel() == 0 or s == 0:
        return out.zero_().to(q.dtype)
    group = h // hkv
    rows = group * t
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    row_blocks = triton.cdiv(rows, block_m)
    splits, chunk = split_plan(bsz * hkv * row_blocks, s, q.device, num_splits)
    o_part, lse_part = out, out  # never written with one split
    if splits > 1:
        o_part = torch.empty(bsz * hkv * rows * splits, d, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(bsz * hkv * rows * splits, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    _decode_kernel[(row_blocks, bsz * hkv, splits)](
        q, k_cache, v_cache, q_pos, out, o_part, lse_part,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], *out.stride()[:3],
        hkv, t, s, d, group, chunk, splits, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_D=block_d(d), DIRECT=splits == 1, UPCAST=upcast(q.dtype),
        PRECISION=dot_precision(q.dtype), **meta(BLOCK_N=_INTERP_BLOCK_N))
    if splits > 1:
        _combine_kernel[(bsz * hkv * rows,)](
            o_part, lse_part, out, *out.stride()[:3], hkv, t, d, group, splits,
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d(d))
    return out.to(q.dtype)
