"""`supervisor ctl import` of GGUF files in the other two formats it reads, Q4_0 and Q8_0 (the bundled model is
Q4_1). No hub: the files are written here with the `gguf` package (llama.cpp's own Python library) from the
bundled model's weights, dequantized and quantized again, with every metadata field copied."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest

from protocol.launch import EngineSettings
from supervisor.model_import import bundled_path
from tests.conftest import MODEL
from tests.test_engine import PARIS, chat, finished, run, text_of
from tests.test_model_import import run_import
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
