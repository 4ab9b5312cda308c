"""Prefill, then decode one token at a time over the model's static KV cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from omnitok.generate.sampling import sample
from omnitok.model.transformer import Transformer


@torch.inference_mode()
def stream_tokens(model: Transformer, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int,
                  *, allowed: torch.Tensor | None = None, stop: Sequence[int] = (),
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` ids continuing `prompt` (a stop id is yielded, then ends).

    allowed: (V,) bool mask of ids that may be drawn. A seed makes the draw reproducible.
    """
    device = model.tok_embeddings.weight.device
    prompt = torch.as_tensor(prompt, dtype=torch.long, device=device).flatten()
    total = prompt.numel() + max_new_tokens
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty")
    if total > model.args.max_seq_len:
        raise ValueError(f"prompt ({prompt.numel()}) + new tokens ({max_new_tokens}) exceed "
                         f"the context of {model.args.max_seq_len}")
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    model.setup_cache(1, total)
    try:
        logits = model(prompt[None], input_pos=torch.arange(prompt.numel(), device=device))
        pos = prompt.numel()
        for _ in range(max_new_tokens):
            token = sample(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p,
                           allowed=allowed, generator=generator)
            yield int(token)
            if int(token) in stop:
                return
            logits = model(token[:, None], input_pos=torch.tensor([pos], device=device))
            pos += 1
    finally:
        model.clear_cache()


def generate_tokens(model: Transformer, prompt: Sequence[int] | torch.Tensor,
                    max_new_tokens: int, **kwargs) -> list[int]:
    """All of `stream_tokens` as a list."""
    return list(stream_tokens(model, prompt, max_new_tokens, **kwargs))
