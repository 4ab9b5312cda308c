"""Attention and fused ops behind one dispatch; `model/` never imports a backend directly.

`attention(q, k, v, ...)` picks a backend (`sdpa` today: PyTorch's scaled_dot_product_attention,
which uses oneDNN/flash CPU kernels on CPUs) and handles the three masks the model needs:

* plain causal self-attention (training / full forward),
* packed rows: `doc_ids` (B, T) confine attention to each document,
* cached attention: `q_pos` (B, T) gives each query's absolute position in a KV cache of
  length S; query (b, i) sees keys j <= q_pos[b, i].
"""

from omnitok.kernels.dispatch import BACKENDS, attention, default_backend, resolve_backend

__all__ = ["BACKENDS", "attention", "default_backend", "resolve_backend"]
