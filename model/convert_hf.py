"""Start from a text LLM: import a Hugging Face Llama-architecture folder (no `transformers`).

The Llama's token rows become the text range of a unified vocabulary; special, image-header,
image and audio rows are added, initialised from the mean of the existing embeddings (bos/eos
from the Llama's own bos/eos rows when it has them). This is how AnyGPT and SpeechGPT began.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from omnitok import OmnitokError, read_json_object
from omnitok.model.checkpoint import model_from_state
from omnitok.model.config import ModelArgs, RopeScaling
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import AudioSpec, Vocab

SUPPORTED = {"llama", "mistral", "qwen3"}  # qwen3 = Llama + per-head QK-norm


class ConvertError(OmnitokError):
    """A Hugging Face folder that cannot be imported (and why)."""


def read_hf_config(src: Path) -> dict:
    cfg = read_json_object(src / "config.json", ConvertError,
                           "missing: not a Hugging Face model folder")
    if cfg.get("model_type") not in SUPPORTED:
        raise ConvertError(f"{src}: model_type {cfg.get('model_type')!r} is not a Llama-"
                           f"architecture model ({', '.join(sorted(SUPPORTED))})")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ConvertError(f"{src}: {flag}=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{src}: hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    windowed = cfg.get("use_sliding_window", cfg.get("model_type") == "mistral")
    if windowed and cfg.get("sliding_window"):
        raise ConvertError(f"{src}: sliding-window attention is not supported")
    return cfg


def hf_rope(cfg: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from either the transformers v4 or v5 layout of config.json."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ConvertError(f"rope scaling {kind!r} is not supported (default, llama3)")
    return theta, RopeScaling(factor=params["factor"], low_freq_factor=params["low_freq_factor"],
                              high_freq_factor=params["high_freq_factor"],
                              original_max_seq_len=params["original_max_position_embeddings"])


def hf_to_args(cfg: dict, vocab_size: int, max_seq_len: int | None = None) -> ModelArgs:
    theta, scaling = hf_rope(cfg)
    n_heads = cfg["num_attention_heads"]
    return ModelArgs(
        vocab_size=vocab_size, dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        intermediate_size=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=scaling,
        max_seq_len=max_seq_len or cfg.get("max_position_embeddings", 2048),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qk_norm=cfg["model_type"] == "qwen3")


def iter_hf_tensors(src: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from model.safetensors, or every shard listed in its index."""
    index = src / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in src.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{src}: no *.safetensors weights (pytorch_model.bin is not read: "
                           "convert it to safetensors first)")
    for name in files:
        try:
            with safe_open(src / name, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise ConvertError(f"{src / name}: corrupt or unreadable safetensors ({e})") from None


def map_hf_weights(hf: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Rename Llama tensors to ours, fusing q/k/v into wqkv and gate/up into w13."""
    out = {"norm.weight": hf.pop("model.norm.weight")}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        q, k, v = (hf.pop(f"{p}self_attn.{n}_proj.weight") for n in "qkv")
        gate, up = hf.pop(f"{p}mlp.gate_proj.weight"), hf.pop(f"{p}mlp.up_proj.weight")
        out |= {
            f"layers.{i}.attention.wqkv.weight": torch.cat([q, k, v]),
            f"layers.{i}.attention.wo.weight": hf.pop(f"{p}self_attn.o_proj.weight"),
            f"layers.{i}.feed_forward.w13.weight": torch.cat([gate, up]),
            f"layers.{i}.feed_forward.w2.weight": hf.pop(f"{p}mlp.down_proj.weight"),
            f"layers.{i}.attention_norm.weight": hf.pop(f"{p}input_layernorm.weight"),
            f"layers.{i}.ffn_norm.weight": hf.pop(f"{p}post_attention_layernorm.weight"),
        }
        if args.qk_norm:
            out[f"layers.{i}.attention.q_norm.weight"] = hf.pop(f"{p}self_attn.q_norm.weight")
            out[f"layers.{i}.attention.k_norm.weight"] = hf.pop(f"{p}self_attn.k_norm.weight")
    return out


def expand_rows(rows: torch.Tensor, vocab: Vocab, bos: int | None, eos: int | None) -> torch.Tensor:
    """(V_text, D) Llama rows -> (padded_size, D): text rows in the text range, the rest = mean."""
    out = rows.float().mean(0).expand(vocab.padded_size, -1).clone()
    text = vocab.range("text")
    out[text.start:text.start + rows.shape[0]] = rows.float()
    for token, hf_id in (("<bos>", bos), ("<eos>", eos)):
        if hf_id is not None and 0 <= hf_id < rows.shape[0]:
            out[vocab.special(token)] = rows[hf_id].float()
    return out.to(rows.dtype)


def _first_id(value: int | list[int] | None) -> int | None:
    """The id of a config field that may hold one id or a list of them (Llama 3's eos)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value if isinstance(value, int) else None


def convert_hf(src: str | os.PathLike, *, image_size: int = 1024,
               audio: AudioSpec | None = None, tokenizer: str | os.PathLike | None = None,
               max_seq_len: int | None = None, dtype: torch.dtype | None = None,
               ) -> tuple[Transformer, Vocab, TextTokenizer | None]:
    """Build (model, vocab, text tokenizer) from a Hugging Face Llama folder."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: no such folder")
    cfg = read_hf_config(src)
    text = _find_tokenizer(src, tokenizer)
    n_text = cfg["vocab_size"]
    if text is not None and text.vocab_size > n_text:
        raise ConvertError(f"the text tokenizer has {text.vocab_size} pieces but the model only "
                           f"{n_text} embedding rows")
    vocab = Vocab(text_size=n_text, image_size=image_size, audio=audio)
    args = hf_to_args(cfg, vocab.padded_size, max_seq_len)
    hf = dict(iter_hf_tensors(src))
    try:
        state = _build_state(hf, args, vocab, cfg)
    except KeyError as e:
        raise ConvertError(f"{src}: tensor {e} missing from the weights") from None
    model = model_from_state(args, state, str(src))
    model.to(dtype=dtype)
    return model.eval(), vocab, text


def _build_state(hf: dict[str, torch.Tensor], args: ModelArgs, vocab: Vocab,
                 cfg: dict) -> dict[str, torch.Tensor]:
    bos, eos = _first_id(cfg.get("bos_token_id")), _first_id(cfg.get("eos_token_id"))
    emb = hf.pop("model.embed_tokens.weight")
    head = hf.pop("lm_head.weight", None)
    state = map_hf_weights(hf, args)
    state["tok_embeddings.weight"] = expand_rows(emb, vocab, bos, eos)
    if not args.tie_embeddings:
        state["output.weight"] = expand_rows(head if head is not None else emb, vocab, bos, eos)
    leftover = sorted(k for k in hf if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise ConvertError(f"unexpected tensors in the Hugging Face weights: {leftover[:4]}")
    return state


def _find_tokenizer(src: Path, tokenizer: str | os.PathLike | None) -> TextTokenizer | None:
    if tokenizer is not None:
        return TextTokenizer.load(tokenizer)
    if (src / "tokenizer.model").exists():
        return TextTokenizer.load(src / "tokenizer.model")
    return None
