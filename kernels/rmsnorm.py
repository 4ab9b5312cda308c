"""Fused RMSNorm in Triton: y = weight * round(x * rsqrt(mean(x^2) + eps)), forward and backward.

Rows are the flattened leading dims of x (..., N). The forward keeps 1/rms per row for the
backward. The backward computes dX row by row and sums dW per program (fp32 partial sums,
added on the host), so no atomics are needed. As in Llama (and `reference.rms_norm`), the
normalized x is rounded to x's dtype before the weight multiplies it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnitok.kernels.triton_utils import (
    INTERPRET,
    LOW_PRECISION,
    check_dtype,
    out_dtype,
    parallelism,
    upcast,
)


@triton.jit
def _fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, n_rows, N, eps,
                ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ROUND: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    r_ok = rows < n_rows
    mask = r_ok[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / N + eps)
    xn = x * rstd[:, None]
    if ROUND:
        xn = xn.to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], (xn * w[None, :]).to(Y.dtype.element_ty),
             mask=mask)
    tl.store(RSTD + rows, rstd, mask=r_ok)


@triton.jit
def _bwd_kernel(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, N,
                rows_per_program, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ROUND: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    c_ok = cols < N
    w = tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    for r0 in range(first, last, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        r_ok = rows < last
        mask = r_ok[:, None] & c_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=r_ok, other=0.0)
        xhat = x * rstd[:, None]
        xn = xhat
        if ROUND:
            xn = xhat.to(X.dtype.element_ty).to(tl.float32)
        dw += tl.sum(dy * xn, 0)
        g = dy * w[None, :]
        dx = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, 1) / N)[:, None])
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask)
    tl.store(DW_PART + pid * N + cols, dw, mask=c_ok)


def _rows_per_block(n: int) -> tuple[int, int]:
    """(BLOCK_N, rows per tile): small tiles on a GPU; big ones under the interpreter, whose
    cost is per operation, not per element."""
    block_n = triton.next_power_of_2(n)
    if INTERPRET:
        return block_n, max(1, min(128, 16384 // block_n))
    return block_n, max(1, min(16, 4096 // block_n))


def _round(x: torch.Tensor) -> bool:
    """Round the normalized x to x's dtype like torch does; not under the interpreter, whose
    fp32 -> bf16 casts truncate."""
    return x.dtype in LOW_PRECISION and not upcast(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        n = x.shape[-1]
        x2 = x.reshape(-1, n)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows = x2.shape[0]
        dtype = torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty(rows, n, dtype=out_dtype(dtype), device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        block_n, per = _rows_per_block(n)
        if rows:
            _fwd_kernel[(triton.cdiv(rows, per),)](
                x2, weight, y, rstd, x2.stride(0), y.stride(0), rows, n, eps,
                ROWS=per, BLOCK_N=block_n, ROUND=_round(x), num_warps=4 if block_n <= 2048 else 8)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.to(dtype).view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        rows, n = x2.shape
        dy2 = dy.reshape(rows, n)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty(rows, n, dtype=out_dtype(x2.dtype), device=x2.device)
        block_n, per = _rows_per_block(n)
        programs = max(1, min(triton.cdiv(rows, per), 4 * parallelism(x2.device)))
        dw_part = torch.zeros(programs, n, dtype=torch.float32, device=x2.device)
        if rows:
            _bwd_kernel[(programs,)](
                dy2, x2, weight, rstd, dx, dw_part, dy2.stride(0), x2.stride(0), dx.stride(0),
                rows, n, triton.cdiv(rows, programs), ROWS=per, BLOCK_N=block_n, ROUND=_round(x2),
                num_warps=4 if block_n <= 2048 else 8)
        return dx.to(x2.dtype).view(ctx.x_shape), dw_part.sum(0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim of x (..., N) with weight (N,); output in promote(x, weight)."""
    check_dtype(x)
    check_dtype(weight)
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight {tuple(weight.shape)} does not match x's last dim {x.shape[-1]}")
    return _RMSNorm.apply(x, weight.contiguous(), float(eps))
