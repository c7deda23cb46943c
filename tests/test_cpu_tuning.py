"""CPU tuning picks OpenBLAS + float32 where the host has OpenBLAS, and falls back cleanly where it does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.tools import find_tool

# A quantized two-layer model, tuned in a fresh interpreter: the BLAS is chosen before mlx.core is imported.
TUNE = """
import sys
from worker.cpu_tuning import preload_blas, float32_bytes, tune_model
blas = preload_blas(sys.argv[1])
import mlx.core as mx
import mlx.nn as nn
model = nn.Sequential(nn.Embedding(64, 128), nn.Linear(128, 256))
nn.quantize(model, group_size=32, bits=4)
size = float32_bytes(model)
model, compute = tune_model(model, total_memory=int(sys.argv[2]))
dtypes = sorted({str(p.dtype) for _, p in __import__("mlx.utils").utils.tree_flatten(model.parameters())})
print(blas, size, compute, dtypes, sep="|")
"""


def tune(library: str, total_memory: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", TUNE, library, str(total_memory)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split("|")


def test_without_openblas_the_weights_stay_as_loaded():
    blas, size, compute, dtypes = tune("/nonexistent/libopenblas.so.0", 1 << 40)
    assert blas == "reference"
    assert int(size) == (64 * 128 + 128 * 256 + 256) * 4  # what float32 would take
    assert compute == "cpu: reference blas (no OpenBLAS)"
    assert "mlx.core.uint32" in dtypes  # still packed 4-bit


@pytest.mark.needs_tool("openblas")
def test_with_openblas_small_models_go_float32_and_large_ones_stay():
    library = find_tool("openblas")
    blas, _, compute, dtypes = tune(library, 1 << 40)
    assert (blas, compute, dtypes) == ("openblas", "cpu: openblas, float32", "['mlx.core.float32']")
    _, _, compute, dtypes = tune(library, 1024)  # a machine too small for the float32 copy
    assert compute.startswith("cpu: openblas, weights as loaded") and "mlx.core.uint32" in dtypes
