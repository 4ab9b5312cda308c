"""Kernel tests run on a GPU when there is one, else on CPU tensors under Triton's interpreter.

TRITON_INTERPRET must be set before a kernel module is imported (Triton picks interpreting or
compiling when a kernel is decorated); the kernel modules are imported lazily, so setting it
here, at collection, is early enough.

Each randomized test draws its shapes from a seed that it prints in every failure message;
OMNITOK_TEST_SEED=<seed> replays it.
"""

from __future__ import annotations

import ctypes
import os
import random
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _single_threaded_blas() -> None:
    """The interpreter runs every tl.dot as a tiny numpy matmul; OpenBLAS threads on a busy
    2-core machine make those up to 100x slower. numpy is loaded already (torch imports it),
    so OPENBLAS_NUM_THREADS would come too late: ask the loaded library directly."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                break


if os.environ.get("TRITON_INTERPRET") == "1":
    _single_threaded_blas()


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Oracle:
    """The tolerance rule against a float64 reference, with the seed in every message.

    fp32 results: relative error (max abs error / max abs reference) <= 1e-5; the denominator is
    at least 0.1, for gradients that vanish exactly (dQ of a query that sees a single key).
    fp16/bf16 results: max abs error <= 2 x that of the same reference computed in the low
    precision dtype, + 1e-5 (flash-attn's rule); that reference's error counts as at least half
    an ulp of the largest reference value (no result stored in the dtype can do better, and a
    reference that is luckier than rounding would otherwise make the bar random).
    """

    seed: int
    case: str = ""

    def check(self, name: str, out: torch.Tensor, ref64: torch.Tensor,
              ref_low: torch.Tensor | None = None) -> float:
        assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != {ref64.shape}"
        err = float((out.detach().double().cpu() - ref64.detach().cpu()).abs().max())
        scale = max(float(ref64.detach().abs().max()), 0.1)
        where = f"{self.case}; replay with OMNITOK_TEST_SEED={self.seed}"
        assert err == err, f"{name}: NaN ({where})"
        if out.dtype == torch.float32:
            rel = err / scale
            print(f"{name:>6} fp32 rel err {rel:.1e} (bound 1e-05) {self.case}")
            assert rel <= 1e-5, f"{name}: relative error {rel:.2e} > 1e-5 ({where})"
            return rel
        assert ref_low is not None, "low precision needs the low precision reference"
        low = float((ref_low.detach().double().cpu() - ref64.detach().cpu()).abs().max())
        half_ulp = torch.finfo(out.dtype).eps / 2 * float(ref64.detach().abs().max())
        low = max(low, half_ulp)
        bound = 2 * low + 1e-5
        print(f"{name:>6} {str(out.dtype)[6:]} err {err:.1e} low-precision ref {low:.1e} "
              f"(ratio {err / max(low, 1e-30):.2f}) {self.case}")
        assert err <= bound, (f"{name}: error {err:.2e} > 2 x {low:.2e} + 1e-5 of the "
                              f"{out.dtype} reference ({where})")
        return err


@pytest.fixture
def seeded() -> tuple[random.Random, Oracle]:
    """(rng for shapes, oracle) from a fresh seed each run (or OMNITOK_TEST_SEED)."""
    seed = int(os.environ.get("OMNITOK_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    return random.Random(seed), Oracle(seed)
