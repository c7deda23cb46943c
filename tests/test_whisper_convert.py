"""The CTranslate2 reader and the Whisper weight mapping on a small model file written here in CTranslate2's layout,
and the subtitle formats. (The bundled model's conversion is checked end to end by test_speech_api.py, which
transcribes speech with it.)"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gateway.dialects.audio.formats import srt, vtt
from protocol.audio import Segment
from supervisor.whisper_convert import Ct2FormatError, mlx_weights, read_ct2

D, HEADS, MELS, VOCAB, AUDIO_CTX, TEXT_CTX = 8, 2, 4, 12, 6, 5


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def write_ct2(path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> None:
    """What CTranslate2's ModelSpec._serialize writes (python/ctranslate2/specs/model_spec.py)."""
    dtypes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("float16"): 4}
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<B", dtypes[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases.items())
    path.write_bytes(out)


def tiny_spec() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def f16(*shape):
        return rng.normal(size=shape).astype(np.float16)

    v = {
        "encoder/num_heads": np.array(HEADS, dtype=np.int16),
        "decoder/num_heads": np.array(HEADS, dtype=np.int16),
        "encoder/conv1/weight": f16(D, MELS, 3),
        "encoder/conv1/bias": f16(D),
        "encoder/conv2/weight": f16(D, D, 3),
        "encoder/conv2/bias": f16(D),
        "encoder/position_encodings/encodings": f16(AUDIO_CTX, D),
        "decoder/position_encodings/encodings": f16(TEXT_CTX, D),
        "decoder/embeddings/weight": f16(VOCAB, D),
    }
    for side in ("encoder", "decoder"):
        for norm in ("layer_norm",):
            v[f"{side}/{norm}/gamma"], v[f"{side}/{norm}/beta"] = f16(D), f16(D)
        layer = f"{side}/layer_0"
        qkv_bias = f16(3 * D)
        qkv_bias[D : 2 * D] = 0  # Whisper's key projection has no bias
        v |= {
            f"{layer}/self_attention/linear_0/weight": f16(3 * D, D),
            f"{layer}/self_attention/linear_0/bias": qkv_bias,
            f"{layer}/self_attention/linear_1/weight": f16(D, D),
            f"{layer}/self_attention/linear_1/bias": f16(D),
            f"{layer}/ffn/linear_0/weight": f16(4 * D, D),
            f"{layer}/ffn/linear_0/bias": f16(4 * D),
            f"{layer}/ffn/linear_1/weight": f16(D, 4 * D),
            f"{layer}/ffn/linear_1/bias": f16(D),
        }
        for part in ("self_attention", "ffn") + (("attention",) if side == "decoder" else ()):
            v[f"{layer}/{part}/layer_norm/gamma"], v[f"{layer}/{part}/layer_norm/beta"] = f16(D), f16(D)
    kv_bias = f16(2 * D)
    kv_bias[:D] = 0
    v |= {
        "decoder/layer_0/attention/linear_0/weight": f16(D, D),
        "decoder/layer_0/attention/linear_0/bias": f16(D),
        "decoder/layer_0/attention/linear_1/weight": f16(2 * D, D),
        "decoder/layer_0/attention/linear_1/bias": kv_bias,
        "decoder/layer_0/attention/linear_2/weight": f16(D, D),
        "decoder/layer_0/attention/linear_2/bias": f16(D),
    }
    return v


def test_reads_ct2_and_maps_whisper_weights(tmp_path):
    spec = tiny_spec()
    write_ct2(tmp_path / "model.bin", spec, {"decoder/projection/weight": "decoder/embeddings/weight"})
    name, variables = read_ct2(tmp_path / "model.bin")
    assert name == "WhisperSpec"
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # the alias, resolved
    assert np.array_equal(variables["encoder/conv2/weight"], spec["encoder/conv2/weight"])

    weights, dims = mlx_weights(variables)
    assert dims == {
        "model_type": "whisper", "n_mels": MELS, "n_audio_ctx": AUDIO_CTX, "n_audio_state": D, "n_audio_head": HEADS,
        "n_audio_layer": 1, "n_vocab": VOCAB, "n_text_ctx": TEXT_CTX, "n_text_state": D, "n_text_head": HEADS,
        "n_text_layer": 1,
    }  # fmt: skip
    qkv = spec["encoder/layer_0/self_attention/linear_0/weight"]
    assert np.array_equal(weights["encoder.blocks.0.attn.query.weight"], qkv[:D])
    assert np.array_equal(weights["encoder.blocks.0.attn.key.weight"], qkv[D : 2 * D])
    assert np.array_equal(weights["encoder.blocks.0.attn.value.weight"], qkv[2 * D :])
    assert "encoder.blocks.0.attn.key.bias" not in weights and "encoder.blocks.0.attn.value.bias" in weights
    kv = spec["decoder/layer_0/attention/linear_1/weight"]
    assert np.array_equal(weights["decoder.blocks.0.cross_attn.value.weight"], kv[D:])
    assert weights["encoder.conv1.weight"].shape == (D, 3, MELS)  # MLX: (out, kernel, in)
    assert np.array_equal(weights["encoder.conv1.weight"][:, 1, :], spec["encoder/conv1/weight"][:, :, 1])
    assert np.array_equal(
        weights["decoder.blocks.0.cross_attn_ln.weight"], spec["decoder/layer_0/attention/layer_norm/gamma"]
    )


def test_refuses_other_binary_versions(tmp_path):
    write_ct2(tmp_path / "model.bin", {}, {}, version=3)
    with pytest.raises(Ct2FormatError, match="binary version 3"):
        read_ct2(tmp_path / "model.bin")


def test_subtitles():
    segments = [
        Segment(id=0, start=0.0, end=2.5, text=" Hello there."),
        Segment(id=1, start=62.04, end=3725.5, text=" Bye."),
    ]
    assert srt(segments) == "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:01:02,040 --> 01:02:05,500\nBye.\n"
    assert (
        vtt(segments)
        == "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n00:01:02.040 --> 01:02:05.500\nBye.\n"
    )
