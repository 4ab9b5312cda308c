"""Pure-torch references of every kernel: the CPU path of the model and the tests' oracle.

Each runs in the dtype it is given, so the same function is the float64 oracle and the
low-precision reference of the tests' tolerance rule.
"""

from __future__ import annotations

import torch


def document_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, ends), each (B, T) int32: the half-open run [start, end) of each token's document.

    A document is a contiguous run of equal ids; a repeated id after another one starts a new
    document.
    """
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    change = doc_ids[:, 1:] != doc_ids[:, :-1]  # (B, T-1): a new document starts at i+1
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = change
    last = torch.ones_like(doc_ids, dtype=torch.bool)
    last[:, :-1] = change
    starts = torch.where(first, idx, torch.zeros_like(idx)).cummax(dim=1).values
    ends = torch.where(last, idx + 1, torch.full_like(idx, t)).flip(1).cummin(dim=1).values.flip(1)
    return starts.to(torch.int32).contiguous(), ends.to(torch.int32).contiguous()


def attention_mask(
    t: int,
    s: int,
    *,
    causal: bool,
    doc_ids: torch.Tensor | None,
    q_pos: torch.Tensor | None,
    device: torch.device | str,
) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, S), True where attention is allowed; None for plain masks
    (no mask, or causal with T == S) that SDPA handles itself."""
    if q_pos is not None:
        if doc_ids is not None:
            raise ValueError("doc_ids and q_pos cannot be combined")
        return (torch.arange(s, device=device) <= q_pos[:, :, None])[:, None]
    if doc_ids is None:
        if causal and t != s:
            # bottom-right alignment: the last query sees every key
            return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)[None, None]
        return None
    if t != s:
        raise ValueError(f"doc_ids needs self-attention (T == S), got T={t}, S={s}")
    starts, _ = document_bounds(doc_ids)
    same = starts[:, :, None] == starts[:, None, :]  # (B, T, T)
    if causal:
        same &= torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return same[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              doc_ids: torch.Tensor | None = None, q_pos: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Softmax attention written out (GQA by repeating K/V), in the inputs' dtype.

    Same masks as `kernels.attention`; a query that sees no key gets zeros (and zero gradients).
    """
    t, s, d = q.shape[2], k.shape[2], q.shape[3]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (d ** -0.5 if scale is None else scale)  # (B, H, T, S)
    mask = attention_mask(t, s, causal=causal, doc_ids=doc_ids, q_pos=q_pos, device=q.device)
    if mask is None:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril() if causal else None
    if mask is None:
        return torch.softmax(scores, dim=-1) @ v
    seen = mask.any(-1, keepdim=True)  # rows with at least one key
    p = torch.softmax(scores.masked_fill(~(mask | ~seen), float("-inf")), dim=-1)
    return (p * seen) @ v


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x) over the last dim; normalized in fp32, rounded to x's dtype (Llama)."""
    xf = x.float() if x.dtype != torch.float64 else x
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos, sin: (B or 1, 1, T, D). Rotates the two halves of each head."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin
