"""Convert a llama-family GGUF file into an MLX model directory that mlx-lm loads.

`mlx.core.load` reads GGUF natively: Q4_0, Q4_1 and Q8_0 tensors arrive as MLX affine-quantized triplets
(weight/scales/biases), everything else as plain arrays. A file with other types (K-quants such as Q4_K_M,
Q5_K, Q6_K, IQ-quants, ...) is dequantized with the `gguf` package and quantized again with MLX
(supervisor/gguf_dequant.py). What remains is naming: tensor names move to the Hugging Face layout mlx-lm
expects, the model config and the tokenizer are rebuilt from GGUF metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from gguf import GGUFReader

from supervisor.gguf_dequant import check_readable, metadata, needs_dequantizing, requantized_weights

# GGUF tensor name (inside blk.N.) -> mlx-lm llama module path (inside model.layers.N.)
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SUPPORTED_ARCHS = {"llama"}
GGUF_BLOCK = 32
DEFAULT_GROUP_SIZE = 64


class GGUFConvertError(ValueError):
    pass


def _hf_module(gguf_module: str) -> str:
    if gguf_module in _TOP_NAMES:
        return _TOP_NAMES[gguf_module]
    blk, index, name = gguf_module.split(".", 2)
    if blk != "blk" or name not in _LAYER_NAMES:
        raise GGUFConvertError(f"unsupported GGUF tensor {gguf_module!r}")
    return f"model.layers.{index}.{_LAYER_NAMES[name]}"


def _scalar(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if value is None:
        raise GGUFConvertError(f"GGUF metadata lacks {key!r}")
    return value.item() if isinstance(value, mx.array) else value


def model_config(meta: dict, quantization: dict, tied: bool) -> dict:
    arch = _scalar(meta, "general.architecture")
    if arch not in _SUPPORTED_ARCHS:
        raise GGUFConvertError(f"GGUF architecture {arch!r} is not supported (supported: llama)")
    hidden = int(_scalar(meta, f"{arch}.embedding_length"))
    heads = int(_scalar(meta, f"{arch}.attention.head_count"))
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(meta, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_scalar(meta, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_scalar(meta, f"{arch}.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(meta, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(meta, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(meta, f"{arch}.context_length")),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        # GGUF keeps llama's Q/K rows in the interleaved rotary layout that llama.cpp uses.
        "rope_traditional": True,
        "tie_word_embeddings": tied,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id", 2)),
        "quantization": quantization,
    }


def convert_weights(
    weights: dict[str, mx.array], progress: Callable[[int], None] = lambda n: None, group_size: int = GGUF_BLOCK
) -> tuple[dict[str, mx.array], dict]:
    """Rename tensors; return them with the per-module quantization config mlx-lm needs. `group_size`: 32 for
    what mx.load read (Q4_0, Q4_1 and Q8_0 all quantize blocks of 32), the chosen one for requantized tensors."""
    out: dict[str, mx.array] = {}
    per_module: dict[str, dict] = {}
    for name in sorted(weights):
        module, _, kind = name.rpartition(".")
        hf = _hf_module(module)
        out[f"{hf}.{kind}"] = weights[name]
        if kind == "scales":
            in_features = weights[name].shape[-1] * group_size
            per_module[hf] = {
                "group_size": group_size,
                "bits": weights[f"{module}.weight"].shape[-1] * 32 // in_features,
            }
        progress(1)
    if not per_module:
        return out, {}
    # The commonest setting is the default; modules that differ (the 8-bit embedding) are named.
    settings = list(per_module.values())
    default = max(settings, key=settings.count)
    quantization = dict(default) | {m: p for m, p in per_module.items() if p != default}
    return out, quantization


def tokenizer_files(meta: dict) -> dict[str, dict]:
    """Build tokenizer.json / tokenizer_config.json for a GPT-2 style BPE vocabulary."""
    model = _scalar(meta, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFConvertError(f"GGUF tokenizer {model!r} is not supported (supported: gpt2 BPE)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    types = types.tolist() if isinstance(types, mx.array) else list(types)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's "smollm"/"starcoder" pre-tokenizers split digits one by one before the GPT-2 regex.
    pre = _scalar(meta, "tokenizer.ggml.pre", "gpt2")
    if pre in {"smollm", "starcoder", "refact", "qwen2", "llama3", "llama-bpe"}:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [tokens[i] for i, t in enumerate(types) if t == 3]
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def token(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if idx is None else tokens[int(_scalar(meta, f"tokenizer.ggml.{key}_token_id"))]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(meta, f"{_scalar(meta, 'general.architecture')}.context_length")),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return {"tokenizer.json": json.loads(tok.to_str()), "tokenizer_config.json": config}


def convert_gguf(
    src: Path, dst: Path, progress_factory=None, bits: int | None = None, group_size: int = DEFAULT_GROUP_SIZE
) -> dict:
    """Write an MLX model directory at `dst` from the GGUF file `src`; return its config. `bits` and `group_size`
    apply to files MLX cannot load as they are (default: the nearest MLX bits per tensor, groups of 64)."""
    reader = GGUFReader(src)
    if needs_dequantizing(reader) or bits is not None:
        check_readable(reader)  # before any work: a type it cannot read is refused at once
        bar = progress_factory(len(reader.tensors), "dequantizing and quantizing") if progress_factory else None
        weights = requantized_weights(reader, bits, group_size, bar.update if bar else (lambda n: None))
        meta = metadata(reader)
    else:
        weights, meta = mx.load(str(src), return_metadata=True)
        bar, group_size = None, GGUF_BLOCK
    if bar:
        bar.close()
    del reader
    bar = progress_factory(len(weights), "converting tensors") if progress_factory else None
    hf_weights, quantization = convert_weights(weights, bar.update if bar else (lambda n: None), group_size)
    if bar:
        bar.close()
    config = model_config(meta, quantization, tied="lm_head.weight" not in hf_weights)
    files = tokenizer_files(meta)
    dst.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dst / "model.safetensors"), hf_weights, metadata={"format": "mlx"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name, content in files.items():
        (dst / name).write_text(json.dumps(content, indent=2, ensure_ascii=False))
    return config
