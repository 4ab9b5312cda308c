"""What the Triton launchers share: interpreter mode, dtype flags, autotuning, input checks.

Imported only by the kernel modules (never by `model/`), after TRITON_INTERPRET is settled:
Triton decides between compiling and interpreting when a kernel is decorated.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from omnitok import OmnitokError
from omnitok.kernels.dispatch import interpreter_enabled

INTERPRET = interpreter_enabled()
LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def upcast(dtype: torch.dtype) -> bool:
    """Cast loads to fp32 in the kernel: the interpreter does fp16/bf16 arithmetic on raw bits."""
    return INTERPRET and dtype in LOW_PRECISION


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype kernels write their outputs in: fp32 under the interpreter, whose fp32 -> bf16 casts
    truncate (a result just below a bf16 value loses a whole ulp); the launcher then rounds to
    nearest on the host, as a GPU store would."""
    return torch.float32 if INTERPRET else dtype


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact fp32 products for fp32 inputs (no silent TF32)."""
    return "ieee" if dtype == torch.float32 or upcast(dtype) else "tf32"


def block_d(d: int) -> int:
    """Head dims are padded to a power of two, at least 16 (the smallest `tl.dot` operand)."""
    return max(16, triton.next_power_of_2(d))


def bucket(n: int) -> int:
    """Autotuning key for a length: its power-of-two bucket, so varying lengths reuse tunings."""
    return triton.next_power_of_2(max(n, 1))


def tuned(configs: list[triton.Config], key: list[str]):
    """`triton.autotune` on a GPU; under the interpreter (no driver to time) the bare kernel,
    which the launcher then calls with `meta(...)`'s fixed block sizes."""
    def wrap(fn):
        return fn if INTERPRET else triton.autotune(configs=configs, key=key)(fn)
    return wrap


def meta(**interp) -> dict:
    """Launch keywords: the given block sizes under the interpreter, none when autotuned."""
    return interp if INTERPRET else {}


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def parallelism(device: torch.device) -> int:
    """How many programs keep the device busy (streaming multiprocessors; a few on the CPU)."""
    return sm_count(device.index or 0) if device.type == "cuda" else 1


def check_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    if dtype not in DTYPES or any(t.dtype != dtype for t in tensors):
        got = ", ".join(str(t.dtype) for t in tensors)
        raise OmnitokError(f"triton kernels take one of fp16/bf16/fp32 for all inputs, got {got}")
    return dtype


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@triton.jit
def load_kv_tile(k_base, v_base, offs_n, offs_d, kv_mask, stride_ks, stride_vs,
                 UPCAST: tl.constexpr):
    """The (BLOCK_N, BLOCK_D) key and value tiles at rows offs_n (masked loads; fp32 if UPCAST)."""
    k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v
