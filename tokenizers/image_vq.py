"""Vector quantization with an l2-normalised codebook (cosine-similarity lookup).

As in ViT-VQGAN / LlamaGen: latents and codebook rows are l2-normalised, so the nearest code
is the one of highest cosine similarity, and low-dimensional (factorised) codes stay well
used. Training uses the straight-through estimator, a codebook loss and a commitment loss,
and restarts codes that go unused on recent encoder outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineQuantizer(nn.Module):
    """Nearest code by cosine similarity over an l2-normalised (K, d) codebook.

    In training mode it also keeps, per code, the step it was last used and a ring of recent
    (normalised) encoder outputs; at the start of each training forward, codes unused for
    `dead_after` steps are restarted on random recent outputs.
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25,
                 dead_after: int = 200, recent: int = 8192) -> None:
        super().__init__()
        self.beta, self.dead_after = beta, dead_after
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, code_dim), dim=1))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long),
                             persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("recent", torch.zeros(0, code_dim), persistent=False)
        self.recent_size = recent
        self.restarted = 0  # codes restarted so far

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def normalized_codebook(self) -> Tensor:
        return F.normalize(self.codebook.float(), dim=1)

    def lookup(self, z: Tensor) -> Tensor:
        """(N, d) latents -> (N,) int64 index of the highest cosine similarity (in fp32)."""
        with torch.autocast(z.device.type, enabled=False):
            sim = F.normalize(z.float(), dim=1) @ self.normalized_codebook().t()  # (N, K)
        return sim.argmax(dim=1)

    def embed(self, codes: Tensor) -> Tensor:
        """(B, h, w) codes -> (B, d, h, w) normalised codebook entries."""
        return self.normalized_codebook()[codes].permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(B, d, h, w) latents -> (straight-through quantized, (B, h, w) codes, losses)."""
        B, d, h, w = z.shape
        flat = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)  # (B*h*w, d)
        if self.training:
            self._restart_dead()
        codes = self.lookup(flat)
        q = self.normalized_codebook()[codes]  # (N, d)
        losses = {"codebook": F.mse_loss(q, flat.detach()),
                  "commit": self.beta * F.mse_loss(flat, q.detach())}
        if self.training:
            self._track(flat.detach(), codes)
        quantized = flat + (q - flat).detach()  # straight-through
        quantized = quantized.reshape(B, h, w, d).permute(0, 3, 1, 2)
        return quantized, codes.reshape(B, h, w), losses

    @torch.no_grad()
    def _track(self, flat: Tensor, codes: Tensor) -> None:
        self.step += 1
        self.last_used[codes] = self.step
        self.recent = torch.cat([flat, self.recent])[: self.recent_size]

    @torch.no_grad()
    def _restart_dead(self) -> None:
        dead = (self.step - self.last_used >= self.dead_after).nonzero().squeeze(1)
        if len(dead) == 0 or len(self.recent) == 0:
            return
        pick = torch.randint(len(self.recent), (len(dead),), device=self.recent.device)
        self.codebook.data[dead] = self.recent[pick].to(self.codebook.dtype)
        self.last_used[dead] = self.step
        self.restarted += len(dead)
