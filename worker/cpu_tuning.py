"""The fastest way to run a model on a Linux CPU host; on Apple Silicon and GPUs nothing changes.

MLX's Linux CPU wheel links a slow reference BLAS, and its CPU quantized matmul does not batch well
(DESIGN.md: 4-bit decode ~5 tok/s, 8 streams ~6 tok/s). The system OpenBLAS, loaded globally before MLX
binds its `cblas_*` symbols, takes over the float matmuls; with the weights dequantized to float32 the same
model decodes about twice as fast and 8 streams about 8x faster. So, on a Linux CPU:

- `preload_blas()` (before `import mlx.core`) loads OpenBLAS if the host has it, else keeps the reference BLAS;
- `tune_model()` (after loading) dequantizes to float32 only when OpenBLAS is in and the float32 copy is
  small next to the machine's memory; otherwise the weights stay as they are.

`MLX_SERVER_CPU_TUNING=off` keeps the stock configuration (for comparisons).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import sys

log = logging.getLogger("worker.cpu_tuning")

# The float32 copy may take at most this share of the machine's memory; larger models keep their weights.
FLOAT32_MEMORY_SHARE = 0.25

_blas = "reference"  # what preload_blas() achieved in this process


def enabled() -> bool:
    return sys.platform == "linux" and os.environ.get("MLX_SERVER_CPU_TUNING", "on") != "off" and not _cuda_build()


def _cuda_build() -> bool:
    """MLX installed with its CUDA backend (the cuda extra, mlx[cuda]): it computes on the GPU, no CPU tuning."""
    return any((d.metadata["Name"] or "").startswith("mlx-cuda") for d in importlib.metadata.distributions())


def preload_blas(library: str | None = None) -> str:
    """Load OpenBLAS into the global symbol scope, so MLX's matmuls resolve to it. Returns the BLAS in use."""
    global _blas
    if not enabled():
        return _blas
    if "mlx.core" in sys.modules and _blas != "openblas":
        log.warning("mlx.core was imported before preload_blas(): its BLAS is already bound")
        return _blas
    path = library or ctypes.util.find_library("openblas")
    if path is None:
        log.info("no OpenBLAS on this host: MLX keeps its reference BLAS")
        return _blas
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("could not load %s (%s): MLX keeps its reference BLAS", path, exc)
        return _blas
    _blas = "openblas"
    return _blas


def float32_bytes(model) -> int:
    """What the model's weights take once dequantized to float32."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bits = {
        name: m.bits for name, m in model.named_modules() if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)
    }
    elements = 0
    for key, value in tree_flatten(model.parameters()):
        owner, _, leaf = key.rpartition(".")
        if owner in bits and leaf == "weight":  # packed uint32: 32 // bits values each
            elements += value.size * (32 // bits[owner])
        elif owner not in bits or leaf not in ("scales", "biases"):  # quantization's scales/biases go away
            elements += value.size
    return elements * 4


def tune_model(model, total_memory: int):
    """Returns (model, description of the configuration chosen)."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return model, "gpu: cuda" if mx.cuda.is_available() else "gpu: metal"
    if not enabled():
        return model, "cpu: stock (tuning off)"
    if _blas != "openblas":
        return model, "cpu: reference blas (no OpenBLAS)"
    needed = float32_bytes(model)
    if needed > FLOAT32_MEMORY_SHARE * total_memory:
        return model, f"cpu: openblas, weights as loaded (float32 would need {needed / 1024**3:.1f} GB)"
    from mlx_lm.utils import dequantize_model

    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return model, "cpu: openblas, float32"
