"""Training the RVQ codebooks: k-means initialisation and EMA updates with dead-code restarts.

Our own update step on encodec's codebook buffers (`embed`, `embed_avg`, `cluster_size`), because
encodec 0.1.1's own one does not suit small batches: its restarted codes are overwritten by the
EMA step right after (so they never come back), and its k-means init stores means where sums are
expected. Here a restarted code gets statistics that reproduce it (`embed_avg = v * c`,
`cluster_size = c`), so the next EMA step keeps it and it has a grace period to win vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from encodec.quantization.core_vq import EuclideanCodebook

from omnitok.tokenizers.audio_codecs import nearest_code


def kmeans(x: torch.Tensor, k: int, iters: int = 10,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, D): ((k, D) centroids, (k,) cluster sizes).

    Empty clusters are reseeded with random points every iteration, so on data with at least
    k distinct points every centroid ends up owning some.
    """
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    means = x[perm[:k]] if n >= k else x[torch.randint(n, (k,), generator=generator)]
    means = means.clone()
    for _ in range(iters):
        idx = nearest_code(x, means)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, idx, x)
        empty = counts == 0
        fresh = x[torch.randint(n, (k,), generator=generator)]
        means = torch.where(empty[:, None], fresh, sums / counts.clamp_min(1)[:, None])
    counts = torch.bincount(nearest_code(x, means), minlength=k)
    return means, counts


@torch.no_grad()
def init_codebooks(books: list[EuclideanCodebook], x: torch.Tensor, iters: int = 10,
                   generator: torch.Generator | None = None,
                   on_level: Callable[[int], None] | None = None) -> torch.Tensor:
    """k-means each level on the residual the levels before it leave; (N, D) vectors.

    Returns the residual after the last level; `on_level(k)` is called after level k.
    """
    residual = x.float()
    for k, book in enumerate(books):
        means, counts = kmeans(residual, book.codebook_size, iters, generator)
        set_codes_(book, torch.ones(book.codebook_size, dtype=torch.bool), means,
                   counts.float().clamp_min(1.0))
        residual = residual - means[nearest_code(residual, means)]
        if on_level is not None:
            on_level(k)
    return residual


def set_codes_(book: EuclideanCodebook, mask: torch.Tensor, vectors: torch.Tensor,
               weight: torch.Tensor | float) -> None:
    """Make codes `mask` equal `vectors` and keep them so: the EMA sums match the new means."""
    weight = torch.as_tensor(weight, dtype=book.cluster_size.dtype).expand(int(mask.sum()))
    book.embed[mask] = vectors
    book.embed_avg[mask] = vectors * weight[:, None]
    book.cluster_size[mask] = weight
    book.inited.fill_(1.0)


@torch.no_grad()
def ema_update_(book: EuclideanCodebook, x: torch.Tensor, idx: torch.Tensor, decay: float,
                dead_threshold: float, restart_weight: float = 1.0, eps: float = 1e-5,
                generator: torch.Generator | None = None) -> int:
    """One EMA step on (N, D) vectors `x` assigned to codes `idx`, then dead-code restarts.

    Codes whose EMA count falls below `dead_threshold` are reset to random vectors of `x`
    with count `restart_weight`; returns how many were restarted.
    """
    k = book.codebook_size
    x = x.float()
    counts = torch.bincount(idx, minlength=k).to(x.dtype)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, idx, x)
    book.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    book.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
    total = book.cluster_size.sum()
    smoothed = (book.cluster_size + eps) / (total + k * eps) * total
    book.embed.copy_(book.embed_avg / smoothed[:, None])
    dead = book.cluster_size < dead_threshold
    n_dead = int(dead.sum())
    if n_dead and x.shape[0]:
        picks = x[torch.randint(x.shape[0], (n_dead,), generator=generator)]
        set_codes_(book, dead, picks, restart_weight)
    return n_dead


def quantize_train(books: list[EuclideanCodebook], emb: torch.Tensor, n_levels: int, *,
                   decay: float, dead_threshold: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    """RVQ for a training step: (B, D, F) -> (straight-through output, commitment loss, codes).

    Levels beyond `n_levels` are skipped; each used level gets an EMA update (with restarts)
    from the residuals it saw. codes: (B, n_levels, F).
    """
    b, d, f = emb.shape
    flat = emb.transpose(1, 2).reshape(b * f, d)
    residual, total, codes = flat.detach().float(), torch.zeros_like(flat, dtype=torch.float), []
    with torch.no_grad():
        for book in books[:n_levels]:
            idx = nearest_code(residual, book.embed)
            q = book.embed[idx]
            ema_update_(book, residual, idx, decay, dead_threshold, generator=generator)
            residual, total = residual - q, total + q
            codes.append(idx)
    commit = torch.nn.functional.mse_loss(flat.float(), total)
    out = flat + (total - flat).detach()  # straight-through
    codes_t = torch.stack(codes).view(n_levels, b, f).transpose(0, 1)
    return out.view(b, f, d).transpose(1, 2), commit, codes_t
