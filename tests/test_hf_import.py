"""Importing a Hugging Face safetensors directory through mlx-lm's converter.

No hub here: the fixture writes a tiny randomly initialised llama in the Hugging Face layout (config.json,
model.safetensors, the tokenizer of the bundled model), which is exactly what `ctl import` reads from a
downloaded checkpoint.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest

from supervisor.model_import import import_model
from tests.conftest import MODEL

TINY = {
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
    "torch_dtype": "float32",
}


@pytest.fixture
def hf_dir(tmp_path, model_store):
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    model = Model(ModelArgs.from_dict(TINY))
    path = tmp_path / "tiny-llama-hf"
    path.mkdir()
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(TINY))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_store / MODEL / name, path / name)
    return path


def test_safetensors_directory_imports_quantized_and_generates(hf_dir, tmp_path):
    from mlx_lm import generate, load

    out = import_model(str(hf_dir), "tiny", tmp_path / "store", quantize=True, q_bits=4)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    model, tokenizer = load(str(out))
    text = generate(model, tokenizer, "Hello", max_tokens=4)
    assert isinstance(text, str)
    assert len(tokenizer.encode(text, add_special_tokens=False)) >= 1
