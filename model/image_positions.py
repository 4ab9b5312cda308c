"""Where each image code sits in its image: (row, column), for the 2-D position embeddings.

RoPE gives every id one position in the stream, so the model sees an image as a line of h*w
codes and has to learn that the code 12 places back is the one above (for a 12-wide grid).
With `ModelArgs.image_positions` the model also adds a learned row and a learned column
embedding to each image code; this module finds those rows and columns in an id stream.
"""

from __future__ import annotations

import torch

from omnitok.model.config import ImagePositions
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
    b, t = ids.shape
    idx = torch.arange(t, device=ids.device).expand(b, t)
    boi = torch.where(ids == layout.boi, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    sides = [ids.gather(1, (boi + j).clamp(0, t - 1)) - layout.grid_start + 1 for j in (1, 2)]
    h, w = (s.clamp(1, layout.max_side) for s in sides)
    k = idx - boi - 3  # index of the code in its image
    code = ((ids >= layout.code_start) & (ids < layout.code_stop) & (boi >= 0) & (k >= 0)
            & (k < h * w))
    for side in sides:  # a header that is not two grid tokens locates nothing
        code &= (side >= 1) & (side <= layout.max_side)
    k = k.clamp(min=0)
    rows = torch.where(code, k // w + 1, 0)
    cols = torch.where(code, k % w + 1, 0)
    return torch.stack([rows, cols], dim=-1)
