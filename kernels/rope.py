"""Fused rotary embedding in Triton (half-split layout, as Llama / `reference.apply_rope`).

y[..., :D/2] = x1 * cos1 - x2 * sin1,  y[..., D/2:] = x2 * cos2 + x1 * sin2
with x1, x2 the two halves of each head. One program per (batch, block of positions) loads the
cos/sin rows once and rotates every head. The backward is the same rotation transposed
(dx1 = dy1 * cos1 + dy2 * sin2, dx2 = dy2 * cos2 - dy1 * sin1); cos and sin get no gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnitok.kernels.triton_utils import INTERPRET, check_dtype
from omnitok.kernels.triton_utils import out_dtype as store_dtype


@triton.jit
def _rope_kernel(X, COS, SIN, Y, stride_xb, stride_xh, stride_xt, stride_cb, stride_ct,
                 stride_sb, stride_st, stride_yb, stride_yh, stride_yt, H, T, HALF,
                 BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr):
    b = tl.program_id(0)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_t < T)[:, None] & (offs_d < HALF)[None, :]
    c_ptr = COS + b * stride_cb + offs_t[:, None] * stride_ct + offs_d[None, :]
    s_ptr = SIN + b * stride_sb + offs_t[:, None] * stride_st + offs_d[None, :]
    cos1 = tl.load(c_ptr, mask=mask, other=0.0).to(tl.float32)
    cos2 = tl.load(c_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(s_ptr, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(s_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    for h in range(0, H):
        x_ptr = X + b * stride_xb + h * stride_xh + offs_t[:, None] * stride_xt + offs_d[None, :]
        x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:
            y1 = x1 * cos1 + x2 * sin2
            y2 = x2 * cos2 - x1 * sin1
        else:
            y1 = x1 * cos1 - x2 * sin1
            y2 = x2 * cos2 + x1 * sin2
        y_ptr = Y + b * stride_yb + h * stride_yh + offs_t[:, None] * stride_yt + offs_d[None, :]
        tl.store(y_ptr, y1.to(Y.dtype.element_ty), mask=mask)
        tl.store(y_ptr + HALF, y2.to(Y.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype,
            backward: bool) -> torch.Tensor:
    bsz, h, t, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = (c.expand(bsz, 1, t, d) for c in (cos, sin))  # broadcast dims get stride 0
    cos, sin = (c if c.stride(-1) == 1 else c.contiguous() for c in (cos, sin))
    y = torch.empty(bsz, h, t, d, dtype=store_dtype(dtype), device=x.device)
    block_t = 128 if INTERPRET else 16  # the interpreter's cost is per operation
    if y.numel():
        _rope_kernel[(bsz, triton.cdiv(t, block_t))](
            x, cos, sin, y, *x.stride()[:3], cos.stride(0), cos.stride(2), sin.stride(0),
            sin.stride(2), *y.stride()[:3], h, t, d // 2, BLOCK_T=block_t,
            BLOCK_HALF=triton.next_power_of_2(d // 2), BACKWARD=backward, num_warps=4)
    return y.to(dtype)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        return _rotate(x, cos, sin, torch.promote_types(x.dtype, cos.dtype), backward=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, ctx.x_dtype, backward=True), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by cos, sin (B or 1, 1, T, D); differentiable in x only."""
    check_dtype(x)
    check_dtype(cos, sin)
    if x.dim() != 4 or x.shape[-1] % 2 or cos.shape[-2:] != x.shape[-2:] or cos.dim() != 4:
        raise ValueError(f"expected x (B, H, T, D) with even D and cos/sin (B or 1, 1, T, D); "
                         f"got {tuple(x.shape)} and {tuple(cos.shape)}")
    return _Rope.apply(x, cos, sin)
