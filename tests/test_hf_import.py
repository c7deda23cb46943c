"""Importing a Hugging Face safetensors directory through mlx-lm's converter.

No hub here: the fixture writes a tiny randomly initialised llama in the Hugging Face layout (config.json,
model.safetensors, the tokenizer of the bundled model), which is exactly what `ctl import` reads from a
downloaded checkpoint.
"""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from protocol.store import ConvertOptions
from supervisor.model_import import import_model
from tests.conftest import MODEL
from tests.tiny_llama import build_tiny_llama

TOKENS = mx.array([[1, 520, 2000, 33, 9000, 77, 12, 345]])


@pytest.fixture
def hf_model(tmp_path, model_store):
    """(the directory in the Hugging Face layout, the model it holds)"""
    mx.random.seed(0)
    path = tmp_path / "tiny-llama-hf"
    return path, build_tiny_llama(path, model_store / MODEL)


def test_safetensors_directory_imports_with_the_same_logits(hf_model, tmp_path):
    from mlx_lm import load

    source, model = hf_model
    out = import_model(str(source), "tiny", tmp_path / "store")
    imported, _ = load(str(out))
    # Unquantized, the conversion changes no weight: the logits are the source model's, to float32 rounding.
    assert mx.allclose(imported(TOKENS), model(TOKENS), atol=1e-5).item()
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_safetensors_directory_imports_quantized_with_logits_close_to_the_source(hf_model, tmp_path):
    from mlx_lm import load

    source, model = hf_model
    out = import_model(str(source), "tiny", tmp_path / "store", convert=ConvertOptions(quantize=True, q_bits=4))
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    imported, _ = load(str(out))
    got, want = imported(TOKENS)[0], model(TOKENS)[0]
    # 4-bit weights move the logits a little: each position's logit vector stays within a cosine similarity of
    # 0.95 of the source's (0.974 measured on this seed; random, untrained weights, so flat logits). A broken
    # conversion (wrong layout, scales or names) gives unrelated vectors, near 0.
    cosine = mx.sum(got * want, axis=-1) / (mx.linalg.norm(got, axis=-1) * mx.linalg.norm(want, axis=-1))
    assert cosine.min().item() > 0.95, cosine.tolist()
