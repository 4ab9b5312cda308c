"""The `flash` backend: flash-attn 2 behind `kernels.attention`, for comparison on CUDA.

flash-attn is optional (it cannot be installed without CUDA) and imported here only. It takes
(B, T, H, D) layouts, fp16/bf16, and aligns causal masks bottom-right like omnitok.
"""

from __future__ import annotations

import torch

from omnitok import OmnitokError
from omnitok.kernels import reference


def _import_flash_attn():
    try:
        import flash_attn
    except ImportError as e:
        raise OmnitokError(f"attention backend 'flash' needs flash-attn ({e}); use triton or "
                           "sdpa") from None
    return flash_attn


def flash_attn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                         doc_ids: torch.Tensor | None, q_pos: torch.Tensor | None,
                         scale: float | None) -> torch.Tensor:
    """`kernels.attention` with flash-attn: q (B, H, T, D), k, v (B, Hkv, S, D) -> (B, H, T, D)."""
    fa = _import_flash_attn()
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise OmnitokError(f"attention backend 'flash' takes fp16/bf16, got {q.dtype}")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, T, H, D)
    if q_pos is not None:
        # the cache already holds the new keys: attend to the first q_pos[:, -1] + 1 entries,
        # bottom-right causal (valid when each row's new positions are consecutive)
        lens = (q_pos[:, -1] + 1).to(torch.int32)
        out = fa.flash_attn_with_kvcache(qt, kt, vt, cache_seqlens=lens, softmax_scale=scale,
                                         causal=True)
        return out.transpose(1, 2)
    if doc_ids is None:
        out = fa.flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=causal)
        return out.transpose(1, 2)
    return _varlen(fa, qt, kt, vt, doc_ids, causal, scale).transpose(1, 2)


def _varlen(fa, qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, doc_ids: torch.Tensor,
            causal: bool, scale: float | None) -> torch.Tensor:
    """Packed rows as one varlen batch of documents (cu_seqlens over the flattened rows)."""
    bsz, t = doc_ids.shape
    starts, _ = reference.document_bounds(doc_ids)
    first = (starts == torch.arange(t, device=doc_ids.device)).flatten()  # (B*T,)
    begin = first.nonzero().flatten().to(torch.int32)
    total = torch.tensor([bsz * t], dtype=torch.int32, device=doc_ids.device)
    cu = torch.cat([begin, total])
    max_len = int((cu[1:] - cu[:-1]).max())
    flat = [x.reshape(bsz * t, x.shape[2], x.shape[3]) for x in (qt, kt, vt)]
    out = fa.flash_attn_varlen_func(*flat, cu, cu, max_len, max_len, softmax_scale=scale,
                                    causal=causal)
    return out.view(bsz, t, qt.shape[2], qt.shape[3])
