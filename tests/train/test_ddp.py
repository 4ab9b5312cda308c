"""DDP: 2 CPU processes over gloo, each with half the rows, follow the same loss curve as one
process with the whole batch (the data module shards rows by rank; the loss is normalised by
the global weight sum)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_two_processes_match_one_with_twice_the_batch(train_data, baseline, tmp_path,
                                                      train_argv, losses):
    out = tmp_path / "ddp"
    argv = train_argv(train_data, out, "--devices", "2", "--strategy", "ddp", "--accelerator",
                      "cpu", batch=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "omnitok.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = losses(out), losses(baseline)
    assert list(two) == list(one) == list(range(1, 13))
    for step in one:
        assert abs(two[step] - one[step]) <= 1e-5 * abs(one[step]), (step, two[step], one[step])
    assert "steps 1-12" in done.stdout and done.stdout.count("steps 1-12") == 1  # rank 0 only
