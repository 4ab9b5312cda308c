"""A PNG of the loss curves per modality (drawn with Pillow; no plotting library needed).

Two panels side by side: loss per modality (and the weighted total) and next-token accuracy
per modality, against the optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omnitok import atomic_path
from omnitok.train.objective import GROUPS

COLORS = {"loss": (40, 40, 40), "text": (31, 119, 180), "image": (214, 39, 40),
          "audio": (44, 160, 44), "special": (148, 103, 189)}
PANEL, MARGIN = (560, 360), (56, 28, 16, 40)  # panel size; margins left, top, right, bottom


def plot_curves(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Draw the loss and accuracy curves of metrics.csv `rows` into the PNG at `path`."""
    image = Image.new("RGB", (2 * PANEL[0], PANEL[1] + 24), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((8, 4), title, fill=(0, 0, 0), font=font)
    losses = {"loss": _series(rows, "loss"), **{g: _series(rows, f"loss_{g}") for g in GROUPS}}
    accuracy = {g: _series(rows, f"acc_{g}") for g in GROUPS}
    _panel(draw, (0, 24), losses, "loss", font)
    _panel(draw, (PANEL[0], 24), accuracy, "accuracy", font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _series(rows: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int],
           series: dict[str, list[tuple[float, float]]], label: str, font) -> None:
    """Axes, ticks, a legend and one polyline per non-empty series."""
    left, top, right, bottom = MARGIN
    x0, y0 = origin[0] + left, origin[1] + top
    x1, y1 = origin[0] + PANEL[0] - right, origin[1] + PANEL[1] - bottom
    points = [p for s in series.values() for p in s]
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    draw.text((x0, y0 - 14), label, fill=(0, 0, 0), font=font)
    if not points:
        return
    (sx0, sx1), (sy0, sy1) = _limits([p[0] for p in points]), _limits([p[1] for p in points])

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - sx0) / (sx1 - sx0) * (x1 - x0),
                y1 - (y - sy0) / (sy1 - sy0) * (y1 - y0))

    for i in range(5):
        y = sy0 + (sy1 - sy0) * i / 4
        draw.line((*at(sx0, y), *at(sx1, y)), fill=(225, 225, 225))
        draw.text((origin[0] + 4, at(sx0, y)[1] - 6), f"{y:.3g}", fill=(0, 0, 0), font=font)
        x = sx0 + (sx1 - sx0) * i / 4
        draw.text((at(x, sy0)[0] - 10, y1 + 4), f"{x:.0f}", fill=(0, 0, 0), font=font)
    draw.text(((x0 + x1) // 2 - 12, y1 + 20), "step", fill=(0, 0, 0), font=font)
    for name, s in series.items():
        color = COLORS.get(name, (0, 0, 0))
        if len(s) > 1:
            draw.line([at(x, y) for x, y in s], fill=color, width=2)
        elif s:
            cx, cy = at(*s[0])
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=color)
    legend_y = y0 + 4
    shown = sum(bool(s) for s in series.values())
    draw.rectangle((x1 - 96, y0 + 2, x1 - 2, y0 + 6 + 14 * shown), fill="white",
                   outline=(200, 200, 200))
    for name, s in series.items():
        if not s:
            continue
        color = COLORS.get(name, (0, 0, 0))
        draw.line((x1 - 90, legend_y + 6, x1 - 70, legend_y + 6), fill=color, width=2)
        draw.text((x1 - 64, legend_y), name, fill=color, font=font)
        legend_y += 14


def _limits(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = 0.04 * (high - low)
    return low - pad, high + pad
