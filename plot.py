"""Line charts as PNGs, drawn with Pillow (no plotting library needed): loss curves of
training runs, throughput against batch size of benchmarks."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omnitok import atomic_path

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (23, 190, 207), (40, 40, 40))
PANEL, MARGIN = (560, 360), (56, 28, 16, 40)  # panel size; margins left, top, right, bottom
Series = dict[str, list[tuple[float, float]]]


def line_chart(series: Series, path: Path, *, title: str = "", xlabel: str = "",
               ylabel: str = "") -> Path:
    """One panel: a polyline per series, with axes, ticks and a legend; written atomically."""
    return save_panels([(series, ylabel, xlabel)], path, title=title)


def save_panels(panels: list[tuple[Series, str, str]], path: Path, *, title: str = "",
                colors: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """Panels side by side, each (series, label, x label); the PNG at `path`."""
    image = Image.new("RGB", (len(panels) * PANEL[0], PANEL[1] + 24), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((8, 4), title, fill=(0, 0, 0), font=font)
    for i, (series, label, xlabel) in enumerate(panels):
        palette = colors or {name: PALETTE[j % len(PALETTE)] for j, name in enumerate(series)}
        draw_panel(draw, (i * PANEL[0], 24), series, label, xlabel, palette, font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], series: Series, label: str,
               xlabel: str, colors: dict[str, tuple[int, int, int]], font) -> None:
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
        draw.text((at(x, sy0)[0] - 10, y1 + 4), f"{x:.3g}", fill=(0, 0, 0), font=font)
    draw.text(((x0 + x1) // 2 - 12, y1 + 20), xlabel, fill=(0, 0, 0), font=font)
    for name, s in series.items():
        color = colors.get(name, (0, 0, 0))
        if len(s) > 1:
            draw.line([at(x, y) for x, y in s], fill=color, width=2)
        for x, y in s:
            cx, cy = at(x, y)
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=color)
    _legend(draw, (x1, y0), series, colors, font)


def _legend(draw: ImageDraw.ImageDraw, corner: tuple[float, float], series: Series,
            colors: dict[str, tuple[int, int, int]], font) -> None:
    x1, y0 = corner
    shown = [name for name, s in series.items() if s]
    if not shown:
        return
    width = 30 + 6 * max(len(name) for name in shown)
    draw.rectangle((x1 - width - 6, y0 + 2, x1 - 2, y0 + 6 + 14 * len(shown)), fill="white",
                   outline=(200, 200, 200))
    for i, name in enumerate(shown):
        y = y0 + 4 + 14 * i
        draw.line((x1 - width, y + 6, x1 - width + 20, y + 6), fill=colors.get(name), width=2)
        draw.text((x1 - width + 26, y), name, fill=colors.get(name), font=font)


def _limits(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = 0.04 * (high - low)
    return low - pad, high + pad
