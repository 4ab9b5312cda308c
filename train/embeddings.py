"""Input embeddings of media ids from their tokenizer's codebook (`omnitok train
--codebook-init`).

A fresh model learns what each image or audio code looks like only from how codes co-occur,
which is slow: two codes for the same edge between different colours start as unrelated as any
two ids. The codebook vectors already hold that geometry. Each vocabulary range of codes gets
its codebook (image: the VQ codebook; audio level k: RVQ codebook k) through one fixed random
projection per codebook width (so the audio levels share it and live in one space),
rescaled to the mean row norm of the model's own initialisation. Text and special rows, and the
output head, keep their random initialisation.
"""

from __future__ import annotations

import torch

from omnitok import OmnitokError
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.vocab import Modality


class CodebookInitError(OmnitokError):
    """No media tokenizer to take codebooks from, or one that does not fit the vocabulary."""


def media_codebooks(bundle: TokenizerBundle) -> dict[tuple[Modality, int], torch.Tensor]:
    """(modality, level) -> (codebook_size, width) float32 codebook of each media range."""
    books = {}
    if bundle.image is not None:
        books[(Modality.IMAGE, 0)] = bundle.image.codebook.detach().float().cpu()
    if bundle.audio is not None:
        for k, book in enumerate(bundle.audio.codebooks()):
            books[(Modality.AUDIO, k)] = book.detach().float().cpu()
    return books


@torch.no_grad()
def codebook_embeddings(model: Transformer, bundle: TokenizerBundle, seed: int = 0) -> list[str]:
    """Overwrite the input embedding rows of every media range of `bundle.vocab` with its
    projected codebook (module docstring); returns the names of the ranges set."""
    books = media_codebooks(bundle)
    if not books:
        raise CodebookInitError("--codebook-init needs image or audio tokenizers (pass "
                                "--tokenizer with the bundle the shards were made with)")
    weight, dim = model.tok_embeddings.weight, model.args.dim
    target = float(weight.norm(dim=1).mean())
    generator, projections, done = torch.Generator().manual_seed(seed), {}, []
    for r in bundle.vocab.ranges:
        book = books.get((r.modality, r.level))
        if book is None:
            continue
        if len(book) != r.stop - r.start:
            raise CodebookInitError(f"{r.name}: a codebook of {len(book)} entries for "
                                    f"{r.stop - r.start} ids")
        width = book.shape[1]
        if width not in projections:
            projections[width] = torch.randn(width, dim, generator=generator) / dim ** 0.5
        rows = book @ projections[width]
        rows *= target / rows.norm(dim=1).mean().clamp(min=1e-12)
        weight[r.start:r.stop] = rows.to(weight.dtype)
        done.append(r.name)
    return done
