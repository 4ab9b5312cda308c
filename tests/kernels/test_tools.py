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


@pytest.mark.slow
@no_gpu_only
def test_kernels_compile_for_ampere_and_hopper():
    """Triton's CUDA backend and ptxas, sm_80 and sm_90, bf16: what the interpreter never checks."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "omnitok.kernels.compile_check"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
