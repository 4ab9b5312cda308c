"""Static, preallocated key/value cache (gpt-fast style): no reallocation while decoding."""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, hd) at positions input_pos (B, T); return the whole caches.

        Rows may sit at different positions (batched prompts of different lengths).
        """
        b = k.shape[0]
        rows = torch.arange(b, device=k.device)[:, None]  # (B, 1) with input_pos (B, T)
        k_out, v_out = self.k_cache[:b], self.v_cache[:b]
        k_out[rows, :, input_pos] = k.transpose(1, 2).to(k_out.dtype)  # (B, T, Hkv, hd)
        v_out[rows, :, input_pos] = v.transpose(1, 2).to(v_out.dtype)
        return k_out, v_out
