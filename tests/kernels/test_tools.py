"""The benchmark command, and the kernels compiling for real GPUs on a machine without one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

no_gpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU the kernels run (the benchmark takes minutes)")


@no_gpu_only
def test_bench_without_cuda_says_only_correctness_is_checked(capsys):
    from omnitok.kernels.bench import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "only correctness can be checked" in out


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_packed_attention_bench_times_every_path_on_the_cpu(capsys, dtype, tol):
    """`omnitok bench packed`: the three paths timed, and the outputs it compared agree."""
    import re

    from omnitok.cli import main

    assert main(["bench", "packed", "--batch-size", "2", "--seq-len", "300", "--doc-min", "20",
                 "--doc-max", "90", "--repeats", "1", "--dtype", dtype]) in (0, None)
    out = capsys.readouterr().out
    assert "dense mask" in out and "model path" in out and "faster than the dense mask" in out
    assert float(re.search(r"max \|difference\| (\S+)", out).group(1)) < tol


@pytest.mark.slow
@no_gpu_only
def test_kernels_compile_for_ampere_and_hopper():
    """Triton's CUDA backend and ptxas, sm_80 and sm_90, bf16: what the interpreter never checks."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "omnitok.kernels.compile_check"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
