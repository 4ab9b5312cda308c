"""CPU linear layers through oneDNN with weights packed ahead of time (inference only).

Decoding multiplies a few rows by every weight matrix: memory-bound matrix-vector work.
On CPUs torch's default float32 path (MKL sgemv) runs it on one thread; oneDNN's matmul with
a weight reordered once for the expected row count reads the weights on every core, about
3x faster here for float32 and 2-3x for bfloat16 (see `omnitok bench`). These are the
primitives torch.compile's CPU backend uses after freezing.

`pack(weight)` registers a packed copy of a weight; `linear(x, weight)` is a custom op
(`omnitok::packed_linear`) that multiplies by the registered copy. Because the op takes the
plain weight, torch.compile can trace it (it stays one opaque call while the code around it
is fused). A packed copy lives as long as its weight; `unpack(weight)` drops it earlier.
Changing a weight in place invalidates its copy (the op then refuses to run): repack.
"""

from __future__ import annotations

import weakref

import torch

from omnitok import OmnitokError, native_bf16

PACKABLE = (torch.float32, torch.bfloat16)
_PACKED: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}  # data_ptr -> (weight, version,
#                                                                 packed copy)


def available() -> bool:
    """True where torch was built with oneDNN and exposes its linear primitives."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def supports(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or weight.dtype not in PACKABLE or not available():
        return False
    return weight.dtype != torch.bfloat16 or native_bf16("cpu")


def pack(weight: torch.Tensor, batch_hint: int = 1) -> bool:
    """Register a oneDNN-packed copy of a (out, in) CPU weight; False if unsupported."""
    if not supports(weight):
        return False
    key = weight.data_ptr()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
    _PACKED[key] = (weakref.ref(weight), weight._version, packed)
    weakref.finalize(weight, _PACKED.pop, key, None)
    return True


def unpack(weight: torch.Tensor) -> None:
    _PACKED.pop(weight.data_ptr(), None)


def is_packed(weight: torch.Tensor) -> bool:
    entry = _PACKED.get(weight.data_ptr())
    return entry is not None and entry[0]() is not None


@torch.library.custom_op("omnitok::packed_linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ weight.T through the packed copy of `weight` (no bias, no autograd)."""
    entry = _PACKED.get(weight.data_ptr())
    if entry is None or entry[0]() is None:
        raise OmnitokError("packed_linear: this weight was not packed (call pack first)")
    if entry[1] != weight._version:
        raise OmnitokError("packed_linear: the weight changed after packing; pack it again")
    return torch.ops.mkldnn._linear_pointwise(x, entry[2], None, "none", [], "")


@linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])
