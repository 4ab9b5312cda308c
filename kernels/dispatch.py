"""Backend selection for attention. Backends are imported lazily; none is required but `sdpa`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnitok import OmnitokError

BACKENDS = ("sdpa", "triton", "flash")


def default_backend(device: torch.device | str) -> str:
    """The backend used when none is asked for: `sdpa` (PyTorch's fused kernels)."""
    return "sdpa"


def resolve_backend(name: str | None, device: torch.device | str = "cpu") -> str:
    """Validate a backend name (None -> the default for `device`); unavailable ones raise."""
    if name is None:
        return default_backend(device)
    if name not in BACKENDS:
        raise OmnitokError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name != "sdpa":
        raise OmnitokError(f"attention backend {name!r} is not available in this build; use sdpa")
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    q_pos: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Multi-head attention with grouped-query heads.

    q: (B, H, T, D); k, v: (B, Hkv, S, D) with H % Hkv == 0. Returns (B, H, T, D).
    causal:  with T == S, query i sees keys j <= i.
    doc_ids: (B, T) ints, T == S; a query sees only keys of its own document (and j <= i).
    q_pos:   (B, T) absolute position of each query in a KV cache of length S; query (b, i)
             sees keys j <= q_pos[b, i] (entries beyond are stale cache slots).
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if backend != "sdpa":
        raise OmnitokError(f"attention backend {backend!r} is not available in this build")
    mask = attention_mask(q.shape[2], k.shape[2], causal=causal, doc_ids=doc_ids, q_pos=q_pos,
                          device=q.device)
    is_causal = causal and mask is None and q.shape[2] == k.shape[2]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def attention_mask(
    t: int,
    s: int,
    *,
    causal: bool,
    doc_ids: torch.Tensor | None,
    q_pos: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean mask (B, 1, T, S), True where attention is allowed; None for plain masks."""
    if q_pos is not None:
        if doc_ids is not None:
            raise ValueError("doc_ids and q_pos cannot be combined")
        return (torch.arange(s, device=device) <= q_pos[:, :, None])[:, None]
    if doc_ids is None:
        if causal and t != s:
            # bottom-right alignment: the last query sees every key
            return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)
        return None
    if t != s:
        raise ValueError(f"doc_ids needs self-attention (T == S), got T={t}, S={s}")
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    if causal:
        same &= torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return same[:, None]
