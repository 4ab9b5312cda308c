"""Where each image code sits in its image: (row, column), for the 2-D position embeddings.

RoPE gives every id one position in the stream, so the model sees an image as a line of h*w
codes and has to learn that the code 12 places back is the one above (for a 12-wide grid).
With `ModelArgs.image_positions` the model also adds a learned row and a learned column
embedding to each image code; this module finds those rows and columns in an id stream.

With `ModelArgs.image_neighbours` it also reads each code's neighbourhood: the codebook
vectors of the code and of its neighbours at `NEIGHBOURS` (row, column) offsets (up-left,
above, up-right, two to the right of above, left), through an MLP; and the maximum of those
units over a whole image, at its <eoi> (or, with the `cnn` summary, a small convolutional
network over the whole grid, `GridReader`). All neighbours come earlier in raster order, so
the input stays causal and a code's input holds a 3x4 patch of its image: a causal
convolution of the grid before the first layer. This module finds the neighbours and
summarises the images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from omnitok.model.config import NEIGHBOURS, ImagePositions
from omnitok.tokenizers.vocab import Modality, Vocab


def image_positions_for(vocab: Vocab) -> ImagePositions:
    """The layout of `vocab`'s image segments (every grid side the vocabulary can express)."""
    if not vocab.has(Modality.IMAGE):
        raise ValueError("the vocabulary has no image range: no image positions to embed")
    codes = vocab.range(Modality.IMAGE)
    return ImagePositions(boi=vocab.special("<boi>"), grid_start=vocab.grid(1),
                          code_start=codes.start, code_stop=codes.stop,
                          max_side=vocab.max_grid)


def grid_positions(ids: torch.Tensor, layout: ImagePositions) -> torch.Tensor:
    """(B, T, 2) int64 1-based (row, column) of every image code in ids (B, T); (0, 0) for
    every other id, and for codes whose <boi> and grid header are not in the row.

    A code belongs to the last <boi> before it: `<boi> grid(h) grid(w) c_0 ... c_{h*w-1}`,
    and c_k sits at row k // w + 1, column k % w + 1.
    """
    return locate(ids, layout).positions


def grid_neighbours(ids: torch.Tensor, layout: ImagePositions, grid: Grid | None = None
                    ) -> torch.Tensor:
    """(B, T, len(NEIGHBOURS)) int64: the id at each offset of `NEIGHBOURS` from every image
    code located by `grid_positions`, -1 where that cell is off the grid or the id is not a
    located code. grid: `locate(ids, layout)` when the caller has it."""
    grid = grid or locate(ids, layout)
    pos, w = grid.positions, grid.width
    t = ids.shape[1]
    idx = torch.arange(t, device=ids.device)
    rows, cols = pos[..., 0], pos[..., 1]
    out = []
    for dr, dc in NEIGHBOURS:
        ok = (rows > 0) & (rows + dr >= 1) & (cols + dc >= 1) & (cols + dc <= w)
        at = (idx + dr * w + dc).clamp(0, t - 1)
        out.append(torch.where(ok, ids.gather(1, at), -1))
    return torch.stack(out, dim=-1)


def neighbours_in_image(codes: list[int], w: int) -> list[int]:
    """`grid_neighbours` of the last of `codes`, an image's codes so far in raster order with
    w per row (what a decode step feeds): one id per offset, -1 off the grid."""
    k = len(codes) - 1
    r, c = divmod(k, w)
    return [codes[k + dr * w + dc] if k >= 0 and r + dr >= 0 and 0 <= c + dc < w else -1
            for dr, dc in NEIGHBOURS]


def image_summaries(ids: torch.Tensor, hidden: torch.Tensor, layout: ImagePositions,
                    grid: Grid | None = None) -> torch.Tensor:
    """(B, T, H): at the id right after each image's last code (its <eoi>), the maximum of
    `hidden` (B, T, H) over that image's codes; 0 at every other id. grid: as in
    `grid_neighbours`."""
    grid = grid or locate(ids, layout)
    code = (grid.positions[..., :1] > 0)
    index = grid.boi.clamp(min=0).unsqueeze(-1).expand_as(hidden)
    floor = torch.full_like(hidden, float("-inf"))
    pooled = floor.scatter_reduce(1, index, torch.where(code, hidden, floor), reduce="amax")
    return torch.where(grid.ends.unsqueeze(-1), pooled.gather(1, index), 0.0)


class GridReader(nn.Module):
    """Three 3x3 convolutions over an image's grid of codebook vectors, max-pooled:
    (N, h, w, code_dim) -> (N, width). It sees the whole image at once (not causal); its
    output enters only at the id after the image."""

    def __init__(self, code_dim: int, width: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(code_dim, width, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.GELU())

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        return self.convs(grids.permute(0, 3, 1, 2)).amax(dim=(2, 3))  # (N, width)


def grid_summaries(ids: torch.Tensor, layout: ImagePositions, codebook: torch.Tensor,
                   reader: GridReader, dtype: torch.dtype, grid: Grid | None = None
                   ) -> torch.Tensor:
    """(B, T, width): `reader` over the grid of codebook vectors of each image whose codes
    are all in ids (B, T), at the id right after its last code (its <eoi>); 0 at every other
    id. Images of one size go through `reader` together. grid: as in `grid_neighbours`."""
    grid = grid or locate(ids, layout)
    width = reader.convs[0].out_channels
    out = torch.zeros(*ids.shape, width, device=ids.device, dtype=dtype)
    b, t = grid.ends.nonzero(as_tuple=True)
    if not len(b):
        return out
    first = grid.boi[b, t] + 3  # the image's first code
    sides = torch.stack([ids[b, first - 2], ids[b, first - 1]], 1) - layout.grid_start + 1
    for h, w in sides.unique(dim=0).tolist():
        sel = (sides == torch.tensor([h, w], device=ids.device)).all(1)
        cells = first[sel, None] + torch.arange(h * w, device=ids.device)  # (n, h*w)
        codes = (ids[b[sel, None], cells] - layout.code_start).clamp(0, len(codebook) - 1)
        vectors = codebook[codes].view(-1, h, w, codebook.shape[1]).to(dtype)  # (n, h, w, d)
        out[b[sel], t[sel]] = reader(vectors).to(dtype)
    return out


class Grid(NamedTuple):
    """Where the images of an id stream (B, T) are."""

    positions: torch.Tensor  # (B, T, 2) grid_positions
    width: torch.Tensor  # (B, T) grid width of each id's image
    boi: torch.Tensor  # (B, T) index of the last <boi> at or before each id, -1 for none
    ends: torch.Tensor  # (B, T) bool: the id right after a located image's last code


def locate(ids: torch.Tensor, layout: ImagePositions) -> Grid:
    b, t = ids.shape
    idx = torch.arange(t, device=ids.device).expand(b, t)
    boi = torch.where(ids == layout.boi, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    sides = [ids.gather(1, (boi + j).clamp(0, t - 1)) - layout.grid_start + 1 for j in (1, 2)]
    h, w = (s.clamp(1, layout.max_side) for s in sides)
    k = idx - boi - 3  # index of the code in its image
    header = (boi >= 0) & (k >= 0)
    code = (ids >= layout.code_start) & (ids < layout.code_stop) & (k < h * w)
    for side in sides:  # a header that is not two grid tokens locates nothing
        header &= (side >= 1) & (side <= layout.max_side)
    code &= header
    ends = header & (k == h * w)  # the <eoi> of a well-formed segment
    k = k.clamp(min=0)
    rows = torch.where(code, k // w + 1, 0)
    cols = torch.where(code, k % w + 1, 0)
    return Grid(torch.stack([rows, cols], dim=-1), w, boi, ends)
