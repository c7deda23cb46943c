"""`supervisor ctl import` of GGUF files. No hub: the files are made here from the bundled model (Q4_1).

Q4_0 and Q8_0, which MLX reads as they are, are written with the `gguf` package (llama.cpp's own Python library)
from the bundled model's weights, dequantized and quantized again, with every metadata field copied. K-quants,
which are dequantized and quantized again with MLX, are written by llama.cpp's own llama-quantize (the `gguf`
package reads K-quants but cannot write them) and compared with the source model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from protocol.launch import EngineSettings
from supervisor.bundled import bundled_path
from supervisor.model_import import ModelImportError, import_model
from tests.conftest import MODEL
from tests.harness import ROOT
from tests.test_engine import PARIS, chat, finished, run, text_of
from tests.test_model_import import run_import
from tests.tools import require_tool
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model

Q = gguf.GGMLQuantizationType


def requantize(src: Path, dst: Path, qtype: Q) -> None:
    """Copy the GGUF file `src` to `dst` with every quantized matrix in `qtype`."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        kind = field.types[0]
        writer.add_key_value(
            field.name, field.contents(), kind, field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    for tensor in reader.tensors:
        if tensor.tensor_type in (Q.F32, Q.F16):
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        else:
            weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, gguf.quants.quantize(weights, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_matrix(path: Path, name: str) -> np.ndarray:
    """A matrix of the file as llama.cpp's own library dequantizes it."""
    [tensor] = [t for t in gguf.GGUFReader(path).tensors if t.name == name]
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """import_(name) -> (the GGUF file, the imported model directory); each format written and imported once."""
    done = {}

    def import_(name: str) -> tuple[Path, Path]:
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            path = folder / f"smollm2.{name}.gguf"
            requantize(bundled_path(MODEL), path, Q[name])
            result = run_import(str(path), "smol", "--store", str(folder / "store"))
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"imported {path} as smol" in result.stdout
            done[name] = path, folder / "store" / "smol"
        return done[name]

    return import_


@pytest.mark.parametrize(("name", "bits"), [("Q4_0", 4), ("Q8_0", 8)])
def test_the_imported_weights_are_the_files_weights(imported, name, bits):
    path, model_dir = imported(name)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 32
    weights = mx.load(str(model_dir / "model.safetensors"))
    module = "model.layers.3.mlp.down_proj"
    ours = mx.dequantize(
        weights[f"{module}.weight"], weights[f"{module}.scales"], weights[f"{module}.biases"], group_size=32, bits=bits
    )
    theirs = gguf_matrix(path, "blk.3.ffn_down.weight")
    assert ours.shape == theirs.shape
    # The same quantized numbers, read by MLX and by gguf: equal up to float16 rounding of the scales.
    assert np.allclose(np.array(ours.astype(mx.float32)), theirs, atol=1e-3, rtol=1e-2)


def test_the_imported_q8_0_model_answers_as_the_original(imported):
    """Q8_0 is near the original (Q4_1) weights: the same greedy answer. (Q4_0, quantized a second time, drifts.)"""
    _, model_dir = imported("Q8_0")
    engine = BatchEngine(load_model(str(model_dir), context_length=512), EngineSettings(prefill_step_size=128))
    events = run(engine, chat("g", PARIS, temperature=0, max_tokens=12))
    assert finished(events, "g").usage.completion_tokens > 0
    assert "Paris" in text_of(events, "g")


PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}]


@pytest.fixture(scope="module")
def source_logits(model_store):
    """The source model (the bundled Q4_1 GGUF, loaded by MLX as it is): its log-probabilities over the prompt."""
    model, tokenizer = load(str(model_store / MODEL))
    tokens = mx.array(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True))[None]
    return tokens, _logprobs(model, tokens)


def _logprobs(model, tokens: mx.array) -> mx.array:
    logits = model(tokens)[0].astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.timeout(900)  # llama-quantize, then a `ctl import` that dequantizes every tensor: minutes on a busy CPU
@pytest.mark.parametrize(
    ("kind", "tensor_type", "max_kl", "min_agreement"),
    # Tolerances: mean KL divergence from the source over the prompt's positions, and how often the most likely
    # next token is the same. The file itself was quantized twice (Q4_1 -> K-quant) before its import.
    [("Q4_K_M", Q.Q4_K, 0.5, 0.7), ("Q6_K", Q.Q6_K, 0.15, 0.85)],
)
def test_k_quant_import_answers_like_the_source(tmp_path, source_logits, kind, tensor_type, max_kl, min_agreement):
    tool = require_tool("llama-quantize")
    gguf_file = tmp_path / f"smollm2.{kind}.gguf"
    subprocess.run(
        [str(tool), "--allow-requantize", str(bundled_path(MODEL)), str(gguf_file), kind],
        check=True, capture_output=True,
    )  # fmt: skip
    assert tensor_type in {t.tensor_type for t in gguf.GGUFReader(gguf_file).tensors}
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "ctl", "import", str(gguf_file), "imported", "--store", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "dequantizing and quantizing" in done.stderr  # the progress bar
    model, _ = load(str(tmp_path / "imported"))
    tokens, source = source_logits
    imported = _logprobs(model, tokens)
    kl = float((mx.exp(source) * (source - imported)).sum(axis=-1).mean())
    agreement = float((mx.argmax(source, axis=-1) == mx.argmax(imported, axis=-1)).mean())
    assert kl < max_kl and agreement > min_agreement, (kl, agreement)


def test_a_type_it_cannot_read_is_refused_with_the_list(tmp_path):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 292), np.uint8), raw_dtype=Q.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelImportError) as caught:
        import_model(str(path), "odd", tmp_path / "store")
    message = str(caught.value)
    assert "Q8_K" in message and "Q4_K" in message and "Q6_K" in message and "IQ4_NL" in message
    assert not (tmp_path / "store" / "odd").exists()
