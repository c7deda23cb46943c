"""A tiny randomly initialised Llama in the Hugging Face layout (config.json, model.safetensors, the bundled model's
tokenizer): what a downloaded, unquantized checkpoint looks like to `ctl import` and `ctl pull`, at 6 MB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def build_tiny_llama(dst: Path, tokenizer_src: Path, dtype: str = "float32", **config_changes):
    """Write it to `dst`; returns the model (mlx-lm's Llama) whose weights were written. `config_changes` go over
    CONFIG (an untied head, say: random weights tied to the embedding mostly repeat the prompt's last token)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    config = CONFIG | {"torch_dtype": dtype} | config_changes
    dst.mkdir(parents=True)
    model = Model(ModelArgs.from_dict(config))
    weights = {k: v.astype(getattr(mx, dtype)) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    (dst / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_src / name, dst / name)
    return model
