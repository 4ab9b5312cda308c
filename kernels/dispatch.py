"""Backend selection and the three entry points the model calls.

Backends: `sdpa` (PyTorch's scaled_dot_product_attention; default on CPU), `triton` (omnitok's
kernels; default on CUDA, allowed on CPU only under TRITON_INTERPRET=1, for correctness checks)
and `flash` (flash-attn, CUDA only, optional). Triton and flash-attn are imported lazily, in the
function that needs them, so importing the model never imports either.

The fused ops (`rms_norm`, `apply_rope`) follow the attention backend: Triton kernels with
`triton`, the torch reference otherwise.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

from omnitok import OmnitokError
from omnitok.kernels import reference

BACKENDS = ("sdpa", "triton", "flash")


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on the CPU (as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def default_backend(device: torch.device | str) -> str:
    """The backend used when none is asked for: `triton` on CUDA, `sdpa` elsewhere."""
    return "triton" if _device_type(device) == "cuda" and _triton_installed() else "sdpa"


def resolve_backend(name: str | None, device: torch.device | str = "cpu") -> str:
    """Validate a backend name for `device` (None -> the default); unusable ones raise."""
    if name is None:
        return default_backend(device)
    if name not in BACKENDS:
        raise OmnitokError(f"unknown attention backend {name!r}; choose from {', '.join(BACKENDS)}")
    kind = _device_type(device)
    if name == "triton":
        if not _triton_installed():
            raise OmnitokError("attention backend 'triton' needs the triton package; use sdpa")
        if kind != "cuda" and not interpreter_enabled():
            raise OmnitokError(f"attention backend 'triton' runs on CUDA, not {kind} (set "
                               "TRITON_INTERPRET=1 to check kernels on the CPU, slowly); use sdpa")
    if name == "flash":
        if kind != "cuda":
            raise OmnitokError(f"attention backend 'flash' needs a CUDA device, not {kind}; "
                               "use sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise OmnitokError("attention backend 'flash' needs flash-attn "
                               "(pip install 'omnitok[flash]'); use triton or sdpa")
    return name


def describe_backend(name: str | None, device: torch.device | str = "cpu") -> str:
    """One line naming the backend that will run and where, for CLIs and logs to print."""
    name = resolve_backend(name, device)
    where = str(torch.device(device))
    if name == "sdpa":
        return (f"attention: sdpa (torch {torch.__version__} scaled_dot_product_attention) "
                f"on {where}")
    if name == "flash":
        import flash_attn

        return f"attention: flash (flash-attn {flash_attn.__version__}) on {where}"
    import triton

    mode = " (interpreter: correctness only, slow)" if _device_type(device) != "cuda" else ""
    return f"attention: triton (omnitok kernels, Triton {triton.__version__}) on {where}{mode}"


def _check_triton_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreter_enabled():
        raise OmnitokError(f"the triton backend got {x.device.type} tensors; it runs on CUDA "
                           "(or on the CPU under TRITON_INTERPRET=1); use sdpa")


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
    causal:  query i sees keys j <= i + S - T (bottom-right aligned, flash-attn's convention:
             the last query sees every key); a query that sees no key gets zeros.
    doc_ids: (B, T) ints, T == S; a document is a contiguous run of equal ids, and a query
             sees only keys of its own document (and, if causal, j <= i).
    q_pos:   (B, T) absolute position of each query in a KV cache of length S; query (b, i)
             sees keys j <= q_pos[b, i] (entries beyond are stale cache slots).
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if q_pos is not None and doc_ids is not None:
        raise ValueError("doc_ids and q_pos cannot be combined")
    if doc_ids is not None and q.shape[2] != k.shape[2]:
        raise ValueError(f"doc_ids needs self-attention (T == S), got T={q.shape[2]}, "
                         f"S={k.shape[2]}")
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal=causal, doc_ids=doc_ids, q_pos=q_pos, scale=scale)
    if backend == "triton":
        _check_triton_device(q)
        if q_pos is not None:
            from omnitok.kernels.decode_attention import decode_attention

            if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
                raise OmnitokError("cached attention (q_pos) has no backward in the triton "
                                   "backend; run generation under torch.no_grad()")
            return decode_attention(q, k, v, q_pos=q_pos, scale=scale)
        from omnitok.kernels.flash_attention import flash_attention

        return flash_attention(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
    if backend == "flash":
        from omnitok.kernels.flash_backend import flash_attn_attention

        return flash_attn_attention(q, k, v, causal=causal, doc_ids=doc_ids, q_pos=q_pos,
                                    scale=scale)
    raise OmnitokError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                   doc_ids: torch.Tensor | None, q_pos: torch.Tensor | None,
                   scale: float | None) -> torch.Tensor:
    """`attention` through torch's scaled_dot_product_attention (an explicit mask when needed).

    Cached attention of a few queries in bf16/fp16 on the CPU takes two matmuls in float32
    instead: torch's CPU kernel is several times slower there (decode steps); packed
    documents in bf16/fp16 on the CPU are attended in float32 (faster there, see below).
    """
    if (q_pos is not None and q.device.type == "cpu" and q.shape[2] <= 16
            and q.dtype in (torch.bfloat16, torch.float16)):
        return cached_attention_matmul(q, k, v, q_pos, scale)
    if (doc_ids is not None and q.shape[2] > 2 * DOC_CHUNK
            and not torch.compiler.is_compiling()):  # data-dependent chunks would recompile
        if _low_precision_cpu(q):
            return _float32_chunked_attention(q, k, v, doc_ids, causal=causal, scale=scale)
        return document_chunked_attention(q, k, v, doc_ids, causal=causal, scale=scale)
    mask = reference.attention_mask(q.shape[2], k.shape[2], causal=causal, doc_ids=doc_ids,
                                    q_pos=q_pos, device=q.device)
    is_causal = causal and mask is None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          scale=scale, enable_gqa=q.shape[1] != k.shape[1])


DOC_CHUNK = 128  # queries per SDPA call in `document_chunked_attention`


def document_chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               doc_ids: torch.Tensor, *, causal: bool,
                               scale: float | None) -> torch.Tensor:
    """Packed-document attention, DOC_CHUNK queries at a time, each against only the keys
    its documents can reach: from the earliest document start among the chunk's queries
    (over the batch) to the chunk's end (causal) or to the latest document end.

    A dense (T, T) mask makes SDPA score every pair; documents of a few hundred ids in rows
    of 1024 leave most of those pairs masked, and this skips them (about 2.7x less attention
    time, fwd + bwd, for documents of 150-380 ids in rows of 1024 on the CPU).
    """
    t = q.shape[2]
    starts, ends = reference.document_bounds(doc_ids)  # (B, T) each
    firsts = list(range(0, t, DOC_CHUNK))
    lasts = [min(a + DOC_CHUNK, t) for a in firsts]
    lo = starts[:, firsts].amin(0).tolist()  # one host sync for every chunk
    hi = lasts if causal else ends[:, [e - 1 for e in lasts]].amax(0).tolist()
    outs = []
    for a, e, k0, k1 in zip(firsts, lasts, lo, hi):
        same = starts[:, a:e, None] == starts[:, None, k0:k1]  # (B, c, span)
        if causal:
            same &= (torch.arange(k0, k1, device=q.device)
                     <= torch.arange(a, e, device=q.device)[:, None])
        outs.append(F.scaled_dot_product_attention(
            q[:, :, a:e], k[:, :, k0:k1], v[:, :, k0:k1], attn_mask=same[:, None], scale=scale,
            enable_gqa=q.shape[1] != k.shape[1]))
    return torch.cat(outs, dim=2)


def _low_precision_cpu(q: torch.Tensor) -> bool:
    """On the CPU with bf16 / fp16 inputs, or under an autocast that would make them so."""
    low = (torch.bfloat16, torch.float16)
    return q.device.type == "cpu" and (q.dtype in low or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in low))


def _float32_chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               doc_ids: torch.Tensor, *, causal: bool,
                               scale: float | None) -> torch.Tensor:
    """`document_chunked_attention` in float32 for bf16 / fp16 inputs on the CPU, outside
    autocast (which would cast to bf16): torch's masked CPU kernel runs fwd + bwd about 1.3x
    faster in float32 than in bf16 (`omnitok bench packed --dtype bfloat16`), and rounds
    less. Returns q's dtype."""
    with torch.autocast("cpu", enabled=False):
        out = document_chunked_attention(q.float(), k.float(), v.float(), doc_ids,
                                         causal=causal, scale=scale)
    return out.to(q.dtype)


def cached_attention_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            q_pos: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Attention over a KV cache with float32 scores: q (B, H, T, D), k/v (B, Hkv, S, D),
    q_pos (B, T); query (b, i) sees keys j <= q_pos[b, i]. Returns (B, H, T, D) in q's dtype."""
    b, h, t, d = q.shape
    hk, s = k.shape[1], k.shape[2]
    g = h // hk  # query heads per kv head, adjacent (head i reads kv head i // g)
    scores = q.float().reshape(b, hk, g * t, d) @ k.float().transpose(-1, -2)  # (B, Hkv, g*T, S)
    scores = scores.view(b, hk, g, t, s) * (scale if scale is not None else d ** -0.5)
    seen = torch.arange(s, device=q.device) <= q_pos[:, None, None, :, None]  # (B, 1, 1, T, S)
    probs = scores.masked_fill(~seen, float("-inf")).softmax(dim=-1)
    out = probs.view(b, hk, g * t, s) @ v.float()  # (B, Hkv, g*T, D)
    return out.view(b, h, t, d).to(q.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             backend: str = "sdpa") -> torch.Tensor:
    """weight * normalize(x) over the last dim, normalized in fp32 and rounded to x's dtype."""
    if backend == "triton":
        _check_triton_device(x)
        from omnitok.kernels.rmsnorm import rms_norm as triton_rms_norm

        return triton_rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
               backend: str = "sdpa") -> torch.Tensor:
    """Rotate the two halves of each head. x: (B, H, T, D); cos, sin: (B or 1, 1, T, D)."""
    if backend == "triton":
        _check_triton_device(x)
        from omnitok.kernels.rope import apply_rope as triton_apply_rope

        return triton_apply_rope(x, cos, sin)
    return reference.apply_rope(x, cos, sin)
