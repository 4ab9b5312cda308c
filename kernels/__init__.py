"""Attention and fused ops behind one dispatch; `model/` never imports a backend directly.

`attention(q, k, v, ...)` runs on the chosen backend (`sdpa`: PyTorch's
scaled_dot_product_attention, default on CPU; `triton`: omnitok's kernels, default on CUDA;
`flash`: flash-attn, optional) and handles the three masks the model needs:

* plain causal self-attention (training / full forward), bottom-right aligned when T != S,
* packed rows: `doc_ids` (B, T) confine attention to each document,
* cached attention: `q_pos` (B, T) gives each query's absolute position in a KV cache of
  length S; query (b, i) sees keys j <= q_pos[b, i].

`rms_norm` and `apply_rope` follow the same backend name (Triton kernels with `triton`, torch
otherwise). The kernels themselves live one op per file (`flash_attention`, `decode_attention`,
`rmsnorm`, `rope`) beside their torch references (`reference`); importing this package does not
import Triton.
"""

from omnitok.kernels.dispatch import (
    BACKENDS,
    apply_rope,
    attention,
    default_backend,
    describe_backend,
    interpreter_enabled,
    resolve_backend,
    rms_norm,
)

__all__ = ["BACKENDS", "apply_rope", "attention", "default_backend", "describe_backend",
           "interpreter_enabled", "resolve_backend", "rms_norm"]
