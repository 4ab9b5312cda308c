"""DDP and FSDP: 2 CPU processes over gloo, each with half the rows, follow the same loss
curve as one process with the whole batch (the data module shards rows by rank; the loss is
normalised by the global weight sum); an FSDP run resumes from its gathered checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

TWO_CPUS = ("--devices", "2", "--accelerator", "cpu", "--strategy")


def two_processes(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "omnitok.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_twice_the_batch(train_data, baseline, tmp_path,
                                                      train_argv, losses, strategy):
    out = tmp_path / strategy
    done = two_processes(train_argv(train_data, out, *TWO_CPUS, strategy, batch=2))
    two, one = losses(out), losses(baseline)
    assert list(two) == list(one) == list(range(1, 13))
    for step in one:
        assert abs(two[step] - one[step]) <= 1e-5 * abs(one[step]), (step, two[step], one[step])
    assert "steps 1-12" in done.stdout and done.stdout.count("steps 1-12") == 1  # rank 0 only


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_resume_on_the_same_curve(train_data, baseline, tmp_path, train_argv,
                                                losses, strategy):
    out = tmp_path / strategy
    two_processes(train_argv(train_data, out, *TWO_CPUS, strategy, steps=7, batch=2))
    two_processes(train_argv(train_data, out, *TWO_CPUS, strategy, "--resume", batch=2))
    resumed, one = losses(out), losses(baseline)
    assert list(resumed) == list(range(1, 13))
    for step in range(8, 13):
        assert abs(resumed[step] - one[step]) <= 1e-5 * abs(one[step]), (step, resumed[step])


def test_fsdp_optimizer_state_refuses_another_strategy():
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from omnitok.train.config import TrainConfigError
    from omnitok.train.distributed import FSDP_SHARDS, load_optimizer_state

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(TrainConfigError, match="written under fsdp"):
        load_optimizer_state(SingleDeviceStrategy("cpu"), optimizer,
                             {FSDP_SHARDS: [optimizer.state_dict()]})
