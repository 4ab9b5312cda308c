"""A contact sheet: generated images in a grid, each with its prompt written under it.

The frame of a cell is green where the judge read the prompt's attributes off the image,
red where it did not, grey where the image was not judged.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omnitok import atomic_path

FRAME = {True: (40, 160, 60), False: (210, 30, 40), None: (160, 160, 160)}
LINE_HEIGHT, PAD = 12, 4


@dataclass(frozen=True)
class Cell:
    """One picture: (H, W, 3) uint8 pixels, the text under it, and the judge's verdict."""

    pixels: np.ndarray
    caption: str
    correct: bool | None = None


def contact_sheet(cells: list[Cell], path: Path, *, columns: int = 8, size: int = 128,
                  lines: int = 4, title: str = "") -> Path:
    """Draw `cells` in rows of `columns`, images scaled to `size` px, at most `lines` lines of
    text each; the PNG is written atomically to `path`."""
    font = ImageFont.load_default()
    columns = max(1, min(columns, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    cell_w, cell_h = size + 2 * PAD, size + 2 * PAD + lines * LINE_HEIGHT + PAD
    top = LINE_HEIGHT + 2 * PAD if title else 0
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    chars = max(8, int(size / _char_width(font)))
    for i, cell in enumerate(cells):
        x, y = (i % columns) * cell_w, top + (i // columns) * cell_h
        draw.rectangle((x + 1, y + 1, x + cell_w - 2, y + size + 2 * PAD - 2),
                       fill=FRAME[cell.correct])
        picture = Image.fromarray(np.ascontiguousarray(cell.pixels, dtype=np.uint8))
        sheet.paste(picture.convert("RGB").resize((size, size), Image.NEAREST),
                    (x + PAD, y + PAD))
        wrapped = textwrap.wrap(cell.caption, chars)[:lines]
        for k, text in enumerate(wrapped):
            draw.text((x + PAD, y + size + 2 * PAD + k * LINE_HEIGHT), text, fill=(0, 0, 0),
                      font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def _char_width(font) -> float:
    """Average width of a character in pixels (the default font is not monospaced)."""
    sample = "a red circle on a blue background"
    left, _, right, _ = font.getbbox(sample)
    return max(1.0, (right - left) / len(sample))
