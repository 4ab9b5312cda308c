"""Run logs: `metrics.csv` (one row per logged step, fixed columns) and TensorBoard events
when the `tensorboard` package is installed. Only rank 0 writes.

A resumed run first drops the rows logged after the checkpoint it resumes from, so the file
always reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from omnitok import atomic_path
from omnitok.train.objective import GROUPS

COLUMNS = ("step", "loss", "lr", "tokens", "tokens_per_s", "seconds",
           *(f"{k}_{g}" for g in GROUPS for k in ("loss", "acc")),
           "val_loss", *(f"val_loss_{g}" for g in GROUPS))
METRICS = "metrics.csv"


def truncate_log(path: Path, last_step: int) -> None:
    """Keep only the rows of `path` with step <= last_step (atomically)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv as numbers (empty cells left out)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f)]


class MetricsWriter:
    """Appends rows to metrics.csv (and TensorBoard scalars when available)."""

    def __init__(self, run: Path, tensorboard: bool = True) -> None:
        self.path = Path(run) / METRICS
        new = not self.path.is_file()
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, COLUMNS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
        self.tb = _tensorboard(Path(run) / "tensorboard") if tensorboard else None

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, int(row["step"]))

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _cell(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return None
    return SummaryWriter(str(folder))
