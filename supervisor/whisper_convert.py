"""A CTranslate2 Whisper model (model.bin, config.json, tokenizer.json) -> an MLX Whisper directory for mlx-audio.

CTranslate2's binary layout (python/ctranslate2/specs/model_spec.py, `_serialize`), little-endian:
  u32 binary version, string spec name, u32 spec revision, u32 variable count,
  per variable: string name, u8 rank, u32 dims[rank], u8 dtype (float32, int8, int16, int32, float16, bfloat16),
                u32 byte count, the bytes;
  u32 alias count, per alias: string alias, string variable it names.
A string is a u16 length (terminator included), the UTF-8 bytes and a NUL.

Its WhisperSpec (specs/whisper_spec.py, filled by converters/transformers.py) fuses attention projections: an
encoder or decoder self-attention's `linear_0` is q|k|v stacked on the output axis, a decoder cross-attention's
`linear_0` is q and `linear_1` is k|v; k has no bias in Whisper, so its slice of the fused bias is zeros. Conv
weights keep PyTorch's (out, in, kernel) layout; MLX wants (out, kernel, in). The decoder's output projection
is an alias of its token embedding (tied), and the encoder's positions are Whisper's fixed sinusoids, which MLX
recomputes.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (5, 6)
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16, which numpy lacks
TIME_PRECISION = 0.02  # seconds per timestamp token

# What transformers' WhisperProcessor needs beside tokenizer.json to load from the directory (mlx-audio uses it).
FEATURE_EXTRACTOR = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "processor_class": "WhisperProcessor",
    "chunk_length": 30,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "sampling_rate": 16000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
}
SPECIAL = "<|endoftext|>"


class Ct2FormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        size = self.unpack("H")
        text = self.data[self.pos : self.pos + size - 1].decode()
        self.pos += size
        return text


def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables by name, aliases resolved); arrays are views of the file's bytes."""
    data = path.read_bytes()
    reader = _Reader(data)
    try:
        version = reader.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise Ct2FormatError(f"{path}: CTranslate2 binary version {version} (supported: {SUPPORTED_VERSIONS})")
        spec = reader.string()
        reader.unpack("I")  # the spec's revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(reader.unpack("I")):
            name = reader.string()
            shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
            dtype_id, size = reader.unpack("B"), reader.unpack("I")
            dtype = _DTYPES[dtype_id] if dtype_id < len(_DTYPES) else None
            if dtype is None:
                raise Ct2FormatError(f"{path}: variable {name} has a dtype this importer does not read ({dtype_id})")
            count = size // np.dtype(dtype).itemsize
            variables[name] = np.frombuffer(data, dtype=dtype, count=count, offset=reader.pos).reshape(shape)
            reader.pos += size
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            variables[alias] = variables[target]
    except struct.error as exc:
        raise Ct2FormatError(f"{path}: truncated CTranslate2 model ({exc})") from None
    return spec, variables


def _layers(variables: dict, side: str) -> int:
    return len({m.group(1) for name in variables if (m := re.match(rf"{side}/layer_(\d+)/", name))})


def mlx_weights(v: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """The variables of a WhisperSpec under MLX Whisper's names, and the model's dimensions (its config.json)."""
    out: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def fused(dsts: list[str], src: str) -> None:
        weight, bias = v[f"{src}/weight"], v[f"{src}/bias"]
        rows = weight.shape[0] // len(dsts)
        for i, dst in enumerate(dsts):
            part = slice(i * rows, (i + 1) * rows)
            out[f"{dst}.weight"] = weight[part]
            if not dst.endswith(".key"):  # Whisper's keys have no bias; CTranslate2 stores zeros there
                out[f"{dst}.bias"] = bias[part]

    for conv in ("conv1", "conv2"):
        out[f"encoder.{conv}.weight"] = v[f"encoder/{conv}/weight"].transpose(0, 2, 1)
        out[f"encoder.{conv}.bias"] = v[f"encoder/{conv}/bias"]
    n_encoder, n_decoder = _layers(v, "encoder"), _layers(v, "decoder")
    for side, count in (("encoder", n_encoder), ("decoder", n_decoder)):
        for i in range(count):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0")
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.mlp1", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp2", f"{src}/ffn/linear_1")
            norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1")
                linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
                norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    embedding = v["decoder/embeddings/weight"]
    out["decoder.token_embedding.weight"] = embedding
    out["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    dims = {
        "model_type": "whisper",
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(embedding.shape[1]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_encoder,
        "n_vocab": int(embedding.shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(embedding.shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_decoder,
    }
    return out, dims


def _tokenizer_with_timestamps(tokenizer: dict, n_vocab: int) -> dict:
    """Whisper's timestamp tokens <|0.00|> ... <|30.00|> fill the vocabulary after the last special token; older
    tokenizer.json files leave them out, and the decoder looks them up by name."""
    taken = {t["id"] for t in tokenizer["added_tokens"]} | set(tokenizer["model"]["vocab"].values())
    first = max(taken) + 1
    tokenizer["added_tokens"] += [
        {
            "id": token_id,
            "content": f"<|{(token_id - first) * TIME_PRECISION:.2f}|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": False,
        }
        for token_id in range(first, n_vocab)
    ]
    return tokenizer


def convert_ct2_whisper(src: Path, dst: Path) -> None:
    """Write `dst` (config.json, model.safetensors, tokenizer and feature extractor files) from the CTranslate2
    Whisper directory `src`."""
    import mlx.core as mx

    spec, variables = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise Ct2FormatError(f"{src}: a CTranslate2 {spec}, not a Whisper model")
    weights, dims = mlx_weights(variables)
    dst.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(
        str(dst / "model.safetensors"), {k: mx.array(np.ascontiguousarray(a)) for k, a in weights.items()}
    )
    (dst / "config.json").write_text(json.dumps(dims, indent=2) + "\n")
    ct2_config = json.loads((src / "config.json").read_text())
    # The cross-attention heads that track time: word timestamps align on them.
    generation = {k: ct2_config[k] for k in ("alignment_heads",) if k in ct2_config}
    (dst / "generation_config.json").write_text(json.dumps(generation) + "\n")
    tokenizer = _tokenizer_with_timestamps(json.loads((src / "tokenizer.json").read_text()), dims["n_vocab"])
    (dst / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    tokenizer_config = {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "model_max_length": dims["n_text_ctx"],
        "bos_token": SPECIAL,
        "eos_token": SPECIAL,
        "unk_token": SPECIAL,
        "pad_token": SPECIAL,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (dst / "preprocessor_config.json").write_text(
        json.dumps(FEATURE_EXTRACTOR | {"feature_size": dims["n_mels"]}, indent=2) + "\n"
    )


def is_ct2_whisper(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()
