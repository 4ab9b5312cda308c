"""`--freeze`: which weights a run trains.

- `backbone`: the transformer blocks and the final norm stay fixed (embeddings and head train);
- `embeddings`: the input embedding (with the image row/column embeddings, where the model
  has them) and the output head stay fixed;
- `text`: everything a text LLM already has stays fixed: the backbone and the embedding and
  head rows of the text range; only the rows of the other ids (special and grid tokens,
  image codes, audio codes) and the image row/column embeddings train, as Anole did to teach
  a text model image tokens.
- `image-codes`: the input embedding rows of the image codes stay fixed (their output-head rows
  train). With `--codebook-init` the model then sees every image code only as its projected
  codebook vector, the geometry that codes of the same edge between different colours share,
  and cannot learn each colour pair's codes apart.

Whole tensors are frozen with `requires_grad = False`. Frozen rows of a trained tensor get a
row mask: `mask_gradients` zeroes their gradients before every optimizer step, and such
tensors are never weight-decayed, so AdamW leaves them bit-for-bit unchanged.
"""

from __future__ import annotations

import torch

from omnitok import OmnitokError
from omnitok.model.transformer import IMAGE_NEIGHBOUR_WEIGHTS, IMAGE_POSITION_WEIGHTS, Transformer
from omnitok.tokenizers.vocab import Modality, Vocab

FREEZE_CHOICES = ("backbone", "embeddings", "text", "image-codes")
ROW_FREEZES = ("text", "image-codes")  # the choices that freeze rows of a trained tensor
ROW_PARAMS = ("tok_embeddings.weight", "output.weight")


class FreezeError(OmnitokError, ValueError):
    """An unknown --freeze name, or one that leaves nothing to train."""


def freeze(model: Transformer, vocab: Vocab, names: list[str] | tuple[str, ...]
           ) -> dict[str, torch.Tensor]:
    """Freeze `names` in `model`; returns {parameter name: (rows,) bool mask of rows that
    train} for tensors frozen only in part (pass it to `mask_gradients`)."""
    unknown = sorted(set(names) - set(FREEZE_CHOICES))
    if unknown:
        raise FreezeError(f"unknown --freeze {', '.join(unknown)}; choose from "
                          f"{', '.join(FREEZE_CHOICES)}")
    fixed: set[str] = set()
    if "backbone" in names or "text" in names:
        fixed |= {n for n, _ in model.named_parameters() if n.startswith(("layers.", "norm."))}
    if "embeddings" in names:
        fixed |= set(ROW_PARAMS) | set(IMAGE_POSITION_WEIGHTS) | set(IMAGE_NEIGHBOUR_WEIGHTS)
    frozen_rows: dict[str, list[range]] = {}
    if "text" in names:
        text = vocab.range("text")
        for name in ROW_PARAMS:
            frozen_rows.setdefault(name, []).append(range(text.start, text.stop))
    if "image-codes" in names:
        if not vocab.image_size:
            raise FreezeError("--freeze image-codes: the vocabulary has no image codes")
        image = vocab.range(Modality.IMAGE)
        frozen_rows.setdefault(ROW_PARAMS[0], []).append(range(image.start, image.stop))
    masks = {}
    for name, spans in frozen_rows.items():
        if name not in fixed and _has(model, name):
            rows = torch.ones(model.args.vocab_size, dtype=torch.bool)
            for span in spans:
                rows[span.start:span.stop] = False
            masks[name] = rows
    for name, p in model.named_parameters():
        if name in fixed:
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise FreezeError(f"--freeze {' '.join(names)} leaves no weight to train")
    return masks


def _has(model: Transformer, name: str) -> bool:
    return name in dict(model.named_parameters())


def mask_gradients(model: torch.nn.Module, masks: dict[str, torch.Tensor],
                   prefix: str = "") -> None:
    """Zero the gradient rows that `masks` (from `freeze`) marks as frozen, in place."""
    params = dict(model.named_parameters())
    for name, rows in masks.items():
        p = params.get(prefix + name)
        if p is None or p.grad is None:
            continue
        if p.grad.shape[0] != rows.shape[0]:
            raise FreezeError(f"--freeze {' and '.join(ROW_FREEZES)} need whole (unsharded) "
                              "embedding gradients; use --strategy ddp")
        p.grad.mul_(rows.to(p.grad.device, p.grad.dtype)[:, None])


def trainable_summary(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> str:
    """"N of M parameters train" (rows counted for row-masked tensors)."""
    total = sum(p.numel() for p in model.parameters())
    params = dict(model.named_parameters())
    train = 0
    for name, p in params.items():
        if p.requires_grad:
            rows = masks.get(name)
            train += p.numel() if rows is None else int(rows.sum()) * p.shape[1]
    return f"{train / 1e6:.2f}M of {total / 1e6:.2f}M parameters train"
