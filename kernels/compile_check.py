"""Compile every kernel for real NVIDIA GPUs without one: `python -m omnitok.kernels.compile_check`.

Runs Triton's CUDA backend down to a cubin (bundled ptxas) for the given architectures, so a
CPU-only machine catches what the interpreter does not check: types of loop-carried values,
`tl.dot` operand shapes, shared memory per config. Kernels must be compiled, not interpreted:
this runs with TRITON_INTERPRET unset (the test that calls it uses a subprocess).
"""

from __future__ import annotations

import os
import sys
import time

ATTN = {"CAUSAL": True, "DOCS": True, "BLOCK_D": 128, "UPCAST": False}


def _kernels(dt: str) -> list[tuple]:
    """(module, kernel, pointer/float argument types, constexprs, num_warps, num_stages)."""
    f32, i32 = "*fp32", "*i32"
    prec = {"PRECISION": "ieee" if dt == "*fp32" else "tf32"}
    fwd = dict(Q=dt, K=dt, V=dt, OUT=dt, LSE=f32, START=i32, END=i32, qk_scale="fp32")
    bwd = dict(Q=dt, K=dt, V=dt, DO=dt, LSE=f32, DELTA=f32, DK=dt, DV=dt, DQ=dt, START=i32,
               END=i32, scale="fp32", qk_scale="fp32")
    dec = dict(Q=dt, K=dt, V=dt, QPOS=i32, OUT=dt, O_PART=f32, LSE_PART=f32, qk_scale="fp32")
    return [
        ("flash_attention", "_fwd_kernel", fwd, {**ATTN, **prec, "BLOCK_M": 128, "BLOCK_N": 64},
         8, 3),
        ("flash_attention_bwd", "_delta_kernel", dict(OUT=dt, DO=dt, DELTA=f32),
         {"BLOCK_M": 64, "BLOCK_D": 128}, 4, 1),
        ("flash_attention_bwd", "_dkdv_kernel", bwd,
         {**ATTN, **prec, "BLOCK_M": 64, "BLOCK_N": 128}, 8, 3),
        ("flash_attention_bwd", "_dq_kernel", bwd,
         {**ATTN, **prec, "BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
        ("decode_attention", "_decode_kernel", dec,
         {"BLOCK_M": 16, "BLOCK_D": 128, "DIRECT": False, "UPCAST": False, **prec,
          "BLOCK_N": 64}, 4, 3),
        ("decode_attention", "_combine_kernel", dict(O_PART=f32, LSE_PART=f32, OUT=dt),
         {"BLOCK_S": 32, "BLOCK_D": 128}, 4, 1),
        ("rmsnorm", "_fwd_kernel", dict(X=dt, W=dt, Y=dt, RSTD=f32, eps="fp32"),
         {"ROWS": 2, "BLOCK_N": 2048, "ROUND": dt != "*fp32"}, 4, 1),
        ("rmsnorm", "_bwd_kernel", dict(DY=dt, X=dt, W=dt, RSTD=f32, DX=dt, DW_PART=f32),
         {"ROWS": 2, "BLOCK_N": 2048, "ROUND": dt != "*fp32"}, 4, 1),
        ("rope", "_rope_kernel", dict(X=dt, COS=dt, SIN=dt, Y=dt),
         {"BLOCK_T": 16, "BLOCK_HALF": 64, "BACKWARD": True}, 4, 1),
    ]


def compile_all(archs: list[int] = (80, 90), dtypes: list[str] = ("bf16",)) -> int:
    """Compile each kernel for each architecture and dtype; print shared memory; 1 on failure.

    Args:
        archs: CUDA compute capabilities (80: A100, 90: H100/H200).
        dtypes: input dtypes (bf16, fp16, fp32; fp32 kernels take ptxas much longer).
    """
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (kernels must be compiled)")
        return 1
    failed = 0
    for arch in archs:
        for dtype in dtypes:
            for module, name, types, consts, warps, stages in _kernels("*" + dtype):
                kernel = getattr(importlib.import_module(f"omnitok.kernels.{module}"), name)
                fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
                sig = {a: "constexpr" if a in consts else types.get(a, "i32")
                       for a in fn.arg_names}
                start = time.time()
                try:
                    out = triton.compile(ASTSource(fn, sig, consts),
                                         target=GPUTarget("cuda", arch, 32),
                                         options={"num_warps": warps, "num_stages": stages})
                except Exception as e:  # report every kernel, fail at the end
                    failed += 1
                    print(f"FAILED {module}.{name} sm_{arch} {dtype}: {e}")
                    continue
                print(f"{module + '.' + name:>36} sm_{arch} {dtype}: "
                      f"{out.metadata.shared:6d} B shared, {time.time() - start:4.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    from omnitok.cli import build_parser

    args = vars(build_parser(compile_all, "python -m omnitok.kernels.compile_check",
                             __doc__).parse_args())
    args.pop("config", None)
    sys.exit(compile_all(**args))
