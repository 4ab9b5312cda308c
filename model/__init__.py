"""Decoder-only transformer over the unified vocabulary: config, modules, KV cache, checkpoints."""
