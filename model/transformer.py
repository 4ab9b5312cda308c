"""Decoder-only transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU, static KV cache.

Weights follow the Llama architecture (so Hugging Face Llama checkpoints import exactly), with
fused projections (`wqkv`, `w13`) and optional per-head QK-norm. Attention, RMSNorm and RoPE go
through `omnitok.kernels`, which runs them on the model's backend (`attn_backend`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnitok import kernels
from omnitok.kernels import packed_linear
from omnitok.model.config import NEIGHBOURS, ModelArgs, RopeScaling
from omnitok.model.image_positions import (
    GridReader,
    grid_neighbours,
    grid_summaries,
    image_summaries,
    locate,
)
from omnitok.model.kv_cache import KVCache

IMAGE_POSITION_WEIGHTS = ("image_rows.weight", "image_cols.weight")  # with args.image_positions
# with args.image_neighbours: the codebook copy (a buffer) and the MLP
IMAGE_NEIGHBOUR_WEIGHTS = ("image_codebook", "image_neighbours.0.weight",
                           "image_neighbours.2.weight", "image_summary.weight",
                           # with the `cnn` summary
                           *(f"image_grid_reader.convs.{i}.{p}" for i in (0, 2, 4)
                             for p in ("weight", "bias")))


class Linear(nn.Linear):
    """nn.Linear (no bias) that multiplies by a oneDNN-packed copy of its weight after
    `Transformer.pack_linears`, when no gradient is needed: faster CPU decoding."""

    packed: bool = False

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed and x.dtype == self.weight.dtype and not torch.is_grad_enabled():
            return packed_linear.linear(x, self.weight)
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps, backend=backend)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """(head_dim / 2,) inverse frequencies, with Llama-3 scaling when configured."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    return _llama3_scale(inv, args.rope_scaling) if args.rope_scaling else inv


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    low_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    mid = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_mid, mid, scaled)


def rope_cache(args: ModelArgs, device: torch.device | None = None) -> torch.Tensor:
    """(max_seq_len, 2, head_dim) float32: cos and sin for every position (half-split layout)."""
    t = torch.arange(args.max_seq_len, dtype=torch.float64)
    freqs = torch.outer(t, rope_inv_freq(args))  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D)
    return torch.stack([emb.cos(), emb.sin()], dim=1).float().to(device)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim)
        self.wo = Linear(args.n_heads * args.head_dim, args.dim)
        self.q_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                doc_ids: torch.Tensor | None, input_pos: torch.Tensor | None,
                backend: str, kv_len: int | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q, backend), self.k_norm(k, backend)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = kernels.apply_rope(q, cos, sin, backend=backend)
        k = kernels.apply_rope(k, cos, sin, backend=backend)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            if kv_len is not None:  # no query sees beyond the longest row: skip those slots
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
        y = kernels.attention(q, k, v, doc_ids=doc_ids, backend=backend,
                              q_pos=input_pos if self.kv_cache is not None else None)
        return self.wo(y.transpose(1, 2).reshape(b, t, q_size))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w13 = Linear(args.dim, 2 * args.intermediate_size)  # gate | up
        self.w2 = Linear(args.intermediate_size, args.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                doc_ids: torch.Tensor | None, input_pos: torch.Tensor | None,
                backend: str, kv_len: int | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x, backend), cos, sin, doc_ids, input_pos,
                               backend, kv_len)
        return x + self.feed_forward(self.ffn_norm(x, backend))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.args = args
        self.attn_backend = attn_backend
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.image_rows = self.image_cols = None
        if args.image_positions is not None:  # index 0: not an image code (stays zero)
            side = args.image_positions.max_side + 1
            self.image_rows = nn.Embedding(side, args.dim, padding_idx=0)
            self.image_cols = nn.Embedding(side, args.dim, padding_idx=0)
        self.image_neighbours = self.image_grid_reader = None
        near = args.image_neighbours
        if near is not None:  # codebook vectors of a code and its neighbours -> dim
            n_codes = args.image_positions.code_stop - args.image_positions.code_start
            self.register_buffer("image_codebook", torch.zeros(n_codes, near.code_dim))
            self.image_neighbours = nn.Sequential(Linear(near.width, near.hidden), nn.SiLU(),
                                                  Linear(near.hidden, args.dim))
            self.image_grid_reader = (GridReader(near.code_dim, near.summary_width)
                                      if near.summary == "cnn" else None)
            self.image_summary = Linear(near.summary_size, args.dim)  # the summary, at <eoi>
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope", rope_cache(args), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):  # residual projections, GPT-2 style
                nn.init.normal_(p, std=args.init_std / math.sqrt(2 * args.n_layers))
        if self.image_rows is not None:  # start as a model without them
            nn.init.zeros_(self.image_rows.weight)
            nn.init.zeros_(self.image_cols.weight)
        if self.image_neighbours is not None:  # unit-variance hidden units on unit vectors;
            first, last = self.image_neighbours[0], self.image_neighbours[2]  # zero output
            nn.init.normal_(first.weight, std=(1 + len(NEIGHBOURS)) ** -0.5)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(self.image_summary.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.args.init_std)

    def reset_rope(self) -> None:
        """Recompute the RoPE table (after building on the meta device, or changing args)."""
        self.rope = rope_cache(self.args, self.tok_embeddings.weight.device)

    # ---- inference ---------------------------------------------------------------------
    def pack_linears(self, batch_hint: int = 16) -> bool:
        """Attach oneDNN-packed weights to every linear layer (CPU inference; see
        kernels/packed_linear.py). False where unsupported. Repack after changing weights.

        batch_hint: rows per matmul the layout is tuned for; 16 served batches of 1 to 16
        best on a 2-core AVX-512 CPU (better than the exact row count for one row)."""
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        if not all(packed_linear.supports(m.weight) for m in linears):
            self.unpack_linears()  # copies packed for earlier weights (another dtype) are stale
            return False
        for module in linears:
            module.packed = packed_linear.pack(module.weight, batch_hint)
        return True

    def unpack_linears(self) -> None:
        for module in self.modules():
            if isinstance(module, Linear) and module.packed:
                packed_linear.unpack(module.weight)
                module.packed = False

    # ---- KV cache ------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None,
                    dtype: torch.dtype | None = None) -> None:
        """Preallocate a static KV cache in every layer: (batch_size, Hkv, max_seq_len, hd)."""
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds max_seq_len "
                             f"{self.args.max_seq_len}")
        w = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, self.args.n_kv_heads, max_seq_len,
                                               self.args.head_dim, dtype or w.dtype, w.device)

    def keep_cache_rows(self, rows: torch.Tensor) -> None:
        """Keep only cache rows `rows` (int64 indices, in the new order): rows leave a batch."""
        for layer in self.layers:
            cache = layer.attention.kv_cache
            cache.k_cache, cache.v_cache = cache.k_cache[rows], cache.v_cache[rows]

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    @property
    def has_cache(self) -> bool:
        return self.layers[0].attention.kv_cache is not None

    # ---- forward -------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, kv_len: int | None = None,
                image_pos: torch.Tensor | None = None,
                neighbours: torch.Tensor | None = None,
                summary: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T).

        input_pos: (B, T) or (T,) absolute positions, required with a KV cache (the new keys
                   and values are written there; each query sees the cache up to its position).
        kv_len:    with a KV cache, attend over its first kv_len slots only (must exceed every
                   position in input_pos); None: the whole cache.
        doc_ids:   (B, T) document of each token in a packed row: attention stays inside each
                   document and positions restart at 0 in each one. Not with a KV cache.
        image_pos: (B, T, 2) 1-based (row, column) of each image code, 0 elsewhere (with
                   `args.image_positions`). None: found in idx, which must then hold whole
                   sequences from their start (required for decode steps with a KV cache).
        neighbours: (B, T, len(NEIGHBOURS)) ids of each image code's neighbours, -1 where none
                   (with `args.image_neighbours`); None: found in idx, as image_pos.
        summary:   (B, T, summary_size) the image reader's summary of an image, at the id
                   after its last code, 0 elsewhere (`image_summaries`, `grid_summaries`);
                   None: found in idx, as image_pos. Decode steps pass all three
                   (`image_summary_of` summarises one image; generate/grammar.py keeps the
                   rest).
        """
        b, t = idx.shape
        if self.has_cache and input_pos is None:
            raise ValueError("a KV cache is set up: pass input_pos")
        if input_pos is not None and doc_ids is not None:
            raise ValueError("doc_ids cannot be combined with input_pos")
        pos = self._positions(b, t, input_pos, doc_ids, idx.device)  # (B, T)
        cos, sin = self.rope[pos].unbind(2)  # (B, T, hd) each
        cos, sin = cos[:, None].to(self.tok_embeddings.weight.dtype), sin[:, None].to(
            self.tok_embeddings.weight.dtype)
        x = self.tok_embeddings(idx)
        if self.image_rows is not None:
            x = x + self._image_embeddings(idx, input_pos, image_pos, neighbours, summary)
        for layer in self.layers:
            x = layer(x, cos, sin, doc_ids, pos if input_pos is not None else None,
                      self.attn_backend, kv_len)
        return self.output(self.norm(x, self.attn_backend))

    def _image_embeddings(self, idx: torch.Tensor, input_pos: torch.Tensor | None,
                          image_pos: torch.Tensor | None, neighbours: torch.Tensor | None,
                          summary: torch.Tensor | None) -> torch.Tensor:
        whole = input_pos is None or int(input_pos.min()) == 0  # idx locates its own images
        layout = self.args.image_positions
        grid = locate(idx, layout) if whole else None  # once, for all three
        if image_pos is None:
            if grid is None:
                raise ValueError("a decode step of a model with image positions needs image_pos")
            image_pos = grid.positions
        out = self.image_rows(image_pos[..., 0]) + self.image_cols(image_pos[..., 1])
        if self.image_neighbours is None:
            return out
        if neighbours is None:
            if grid is None:
                raise ValueError("a decode step of a model with image neighbours needs "
                                 "neighbours")
            neighbours = grid_neighbours(idx, layout, grid)
        hidden = self._reader_units(idx, image_pos, neighbours, out.dtype)
        if summary is None:
            if grid is None:
                raise ValueError("a decode step of a model with image neighbours needs summary")
            summary = self._summaries(idx, grid, hidden.dtype, hidden)
        return out + self.image_neighbours[2](hidden) + self.image_summary(summary)

    def _summaries(self, idx: torch.Tensor, grid, dtype: torch.dtype,
                   hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, summary_size): each whole image's summary at its <eoi>, 0 elsewhere. The
        pool summary pools the reader's units `hidden` (computed here when None); the cnn
        summary reads the codebook vectors and needs no units."""
        layout = self.args.image_positions
        if self.image_grid_reader is not None:
            return grid_summaries(idx, layout, self.image_codebook, self.image_grid_reader,
                                  dtype, grid)
        if hidden is None:
            hidden = self._reader_units(idx, grid.positions, grid_neighbours(idx, layout, grid),
                                        dtype)
        return image_summaries(idx, hidden, layout, grid)

    def _reader_units(self, idx: torch.Tensor, image_pos: torch.Tensor,
                      neighbours: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, T, hidden) units of the local image reader: 0 at every id that is not a code."""
        own = torch.where(image_pos[..., :1] > 0, idx.unsqueeze(-1), -1)  # the code itself
        ids = torch.cat([own, neighbours], dim=-1)  # (B, T, 1 + K)
        local = (ids - self.args.image_positions.code_start).clamp(0, len(self.image_codebook)
                                                                   - 1)
        vectors = self.image_codebook[local] * (ids >= 0).unsqueeze(-1)  # 0 off the grid
        first, act, _ = self.image_neighbours  # no bias: 0 in, 0 out
        return act(first(vectors.to(dtype).flatten(-2)))

    def image_summary_of(self, segment: torch.Tensor) -> torch.Tensor:
        """(summary_size,) the reader's summary of one image segment (`<boi> h w codes
        <eoi>`, 1-D ids): the `summary` a decode step passes when it feeds that <eoi>."""
        ids = segment[None]
        grid = locate(ids, self.args.image_positions)
        return self._summaries(ids, grid, self.tok_embeddings.weight.dtype)[0, -1]

    def _positions(self, b: int, t: int, input_pos: torch.Tensor | None,
                   doc_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if input_pos is not None:
            return input_pos.expand(b, t) if input_pos.dim() == 1 else input_pos
        if t > self.args.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.args.max_seq_len}")
        idx = torch.arange(t, device=device).expand(b, t)
        if doc_ids is None:
            return idx
        return idx - document_starts(doc_ids)


def document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the first token of each token's document (documents are contiguous)."""
    t = doc_ids.shape[1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(new_doc, idx, torch.zeros_like(idx)).cummax(dim=1).values
