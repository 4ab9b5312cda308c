"""A PNG of the loss curves per modality (drawn with Pillow through `omnitok.plot`).

Two panels side by side: loss per modality (and the weighted total, and the held-out loss
when the run has --val-data) and next-token accuracy per modality, against the optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

from omnitok.plot import save_panels
from omnitok.train.objective import GROUPS

COLORS = {"loss": (40, 40, 40), "held-out loss": (150, 150, 150), "text": (31, 119, 180),
          "image": (214, 39, 40), "audio": (44, 160, 44), "special": (148, 103, 189)}


def plot_curves(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Draw the loss and accuracy curves of metrics.csv `rows` into the PNG at `path`."""
    losses = {"loss": _series(rows, "loss"), **{g: _series(rows, f"loss_{g}") for g in GROUPS}}
    if any("val_loss" in r for r in rows):
        losses["held-out loss"] = _series(rows, "val_loss")
    accuracy = {g: _series(rows, f"acc_{g}") for g in GROUPS}
    return save_panels([(losses, "loss", "step"), (accuracy, "accuracy", "step")], path,
                       title=title, colors=COLORS)


def _series(rows: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
