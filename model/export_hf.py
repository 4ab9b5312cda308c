"""The same weights as a `transformers` Llama (or Qwen3) model: for side-by-side benchmarks.

`transformers` is optional and imported here only. The mapping is the inverse of
`convert_hf.map_hf_weights` (fused `wqkv`/`w13` split back into q/k/v and gate/up).
"""

from __future__ import annotations

import torch

from omnitok import OmnitokError
from omnitok.model.transformer import Transformer


def hf_config_dict(model: Transformer) -> dict:
    """A `transformers` config dict (LlamaConfig, or Qwen3Config with QK-norm) for `model`."""
    a = model.args
    if a.image_positions is not None:
        raise OmnitokError("this model embeds 2-D image positions: a transformers Llama has no "
                           "place for them")
    cfg = dict(vocab_size=a.vocab_size, hidden_size=a.dim, num_hidden_layers=a.n_layers,
               num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
               head_dim=a.head_dim, intermediate_size=a.intermediate_size,
               rms_norm_eps=a.norm_eps, max_position_embeddings=a.max_seq_len,
               tie_word_embeddings=a.tie_embeddings, attention_bias=False, mlp_bias=False,
               hidden_act="silu")
    rope: dict = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.rope_scaling is not None:
        s = a.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": a.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_seq_len}
    cfg["rope_theta"] = a.rope_theta
    cfg["rope_scaling"] = None if a.rope_scaling is None else dict(rope)
    cfg["rope_parameters"] = rope
    return cfg


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our state dict renamed to `transformers` Llama names (views, no copies where possible)."""
    a = model.args
    q_size, kv_size = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    out = {"model.embed_tokens.weight": model.tok_embeddings.weight,
           "model.norm.weight": model.norm.weight, "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = layer.attention.wqkv.weight.split([q_size, kv_size, kv_size])
        gate, up = layer.feed_forward.w13.weight.chunk(2)
        out |= {f"{p}self_attn.q_proj.weight": q, f"{p}self_attn.k_proj.weight": k,
                f"{p}self_attn.v_proj.weight": v,
                f"{p}self_attn.o_proj.weight": layer.attention.wo.weight,
                f"{p}mlp.gate_proj.weight": gate, f"{p}mlp.up_proj.weight": up,
                f"{p}mlp.down_proj.weight": layer.feed_forward.w2.weight,
                f"{p}input_layernorm.weight": layer.attention_norm.weight,
                f"{p}post_attention_layernorm.weight": layer.ffn_norm.weight}
        if a.qk_norm:
            out[f"{p}self_attn.q_norm.weight"] = layer.attention.q_norm.weight
            out[f"{p}self_attn.k_norm.weight"] = layer.attention.k_norm.weight
    return {k: v.detach() for k, v in out.items()}


def to_hf(model: Transformer, dtype: torch.dtype | None = None):
    """A `transformers` causal LM holding a copy of `model`'s weights, in eval mode."""
    try:
        import transformers
    except ImportError:
        raise OmnitokError("comparing with Hugging Face needs transformers "
                           "(pip install transformers)") from None
    name = "Qwen3" if model.args.qk_norm else "Llama"
    config = getattr(transformers, f"{name}Config")(**hf_config_dict(model))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = getattr(transformers, f"{name}ForCausalLM")(config)
    state = {k: v.clone() for k, v in hf_state_dict(model).items()}
    if model.args.tie_embeddings:
        state.pop("lm_head.weight")
    hf.load_state_dict(state, strict=False, assign=True)
    if model.args.tie_embeddings:
        hf.tie_weights()
    # the rotary table was built on the meta device: build it again on the weights' device
    with torch.device(model.tok_embeddings.weight.device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=config)
    return hf.to(dtype=dtype or model.tok_embeddings.weight.dtype).eval()
