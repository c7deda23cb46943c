"""GGUF tensors that MLX cannot load as they are (K-quants, IQ-quants, Q5_0/Q5_1, ...): dequantized with the `gguf`
package, then quantized again with MLX.

Each quantized tensor gets the MLX bit width nearest to its GGUF type (Q4_K -> 4, Q6_K -> 6, Q2_K -> 2, ...) unless
`bits` says otherwise, in groups of `group_size` (64 by default); 1-D tensors (norms) stay float32, and float
matrices (F16, BF16, F32) stay float16 unless `bits` is given.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
# What mx.load reads from a GGUF file directly (as MLX quantized triplets, or floats).
MLX_NATIVE_TYPES = FLOAT_TYPES | {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0}
MLX_BITS = (2, 3, 4, 5, 6, 8)


class UnreadableTensorError(ValueError):
    pass


def readable_types() -> list[GGMLQuantizationType]:
    """The tensor types the installed `gguf` package can dequantize."""
    readable = []
    for qtype, (_, type_size) in GGML_QUANT_SIZES.items():
        try:
            dequantize(np.zeros((1, type_size), np.uint8), qtype)
        except NotImplementedError:
            continue
        readable.append(qtype)
    return readable


def nearest_bits(qtype: GGMLQuantizationType) -> int:
    """The MLX bit width closest to a GGUF type's: the digit in its name (Q4_K -> 4, IQ3_S -> 3, TQ1_0 -> 1)."""
    name = qtype.name.removeprefix("I").removeprefix("T").removeprefix("MX").removeprefix("NV")
    digits = name[1] if name[:1] in ("Q", "F") and name[1:2].isdigit() else "4"  # MXFP4 / NVFP4: FP4
    return min(MLX_BITS, key=lambda b: (abs(b - int(digits)), -b))


def needs_dequantizing(reader: GGUFReader) -> bool:
    return any(t.tensor_type not in MLX_NATIVE_TYPES for t in reader.tensors)


def check_readable(reader: GGUFReader) -> None:
    readable = set(readable_types())
    unknown = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in readable})
    if unknown:
        names = ", ".join(t.name for t in sorted(readable, key=lambda t: t.value))
        raise UnreadableTensorError(f"tensor type(s) {', '.join(unknown)} cannot be read (readable: {names})")


def requantized_weights(
    reader: GGUFReader, bits: int | None, group_size: int, progress: Callable[[int], None] = lambda n: None
) -> dict[str, mx.array]:
    """Every tensor under its GGUF name; quantized ones as `<name>` (packed), `<name minus .weight>.scales` and
    `.biases`, as mx.load names the tensors of a Q4_0 file."""
    check_readable(reader)
    out: dict[str, mx.array] = {}
    for tensor in reader.tensors:
        qtype = tensor.tensor_type
        values = dequantize(tensor.data, qtype)  # float32, rows x columns
        width = bits if bits is not None else (None if qtype in FLOAT_TYPES else nearest_bits(qtype))
        if values.ndim == 1 or width is None or values.shape[-1] % group_size:
            out[tensor.name] = mx.array(values.astype(np.float32 if values.ndim == 1 else np.float16))
        else:
            weight, scales, biases = affine_quantize(values, width, group_size)
            module = tensor.name.removesuffix(".weight")
            out[tensor.name], out[f"{module}.scales"], out[f"{module}.biases"] = weight, scales, biases
        mx.eval(list(out.values())[-3:])
        progress(1)
    return out


def affine_quantize(values: np.ndarray, bits: int, group_size: int) -> tuple[mx.array, mx.array, mx.array]:
    """MLX's affine format (w = scale * q + bias, q packed LSB-first into uint32) with each group's grid spanning
    its minimum to its maximum. Values that already sit on a grid of 2**bits levels per group (a GGUF block's)
    come back almost exactly; mx.quantize instead makes the larger edge exactly representable and clips the
    other, which on a model that was quantized once already costs far more."""
    rows, cols = values.shape
    groups = values.reshape(rows, cols // group_size, group_size)
    low, high = groups.min(axis=-1, keepdims=True), groups.max(axis=-1, keepdims=True)
    levels = 2**bits - 1
    scales = np.where(high > low, (high - low) / levels, 1.0).astype(np.float16)
    biases = low.astype(np.float16)
    codes = np.clip(np.rint((groups - biases) / scales), 0, levels).astype(np.uint64).reshape(rows, cols // 8, 8)
    # Eight codes make `bits` bytes of the little-endian bit stream MLX reads.
    words = np.bitwise_or.reduce(codes << (np.arange(8, dtype=np.uint64) * bits), axis=-1)
    packed = words[..., None].view(np.uint8).reshape(rows, cols // 8, 8)[..., :bits].reshape(rows, -1)
    return mx.array(packed.view(np.uint32)), mx.array(scales[..., 0]), mx.array(biases[..., 0])


def metadata(reader: GGUFReader) -> dict:
    """The GGUF's key/value metadata as Python values."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
