"""A tiny text-to-speech model of a real mlx-audio architecture, with random weights: Kitten TTS (the StyleTTS 2
family Kokoro belongs to: an ALBERT text encoder, a duration and prosody predictor, an iSTFTNet vocoder).

No TTS weights can be fetched here, and none ship in a package. Its text front-end is espeak-ng (through
phonemizer), which works offline, and its predicted durations make the audio grow with the text, as a trained
model's do. What it says is noise; the server around it is what the tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_RATE = 24_000
STYLE_DIM = 128  # Kitten splits a voice vector at 128: its style size is fixed
VOICES = ("tiny-voice-a", "tiny-voice-b")


def config() -> dict:
    return {
        "model_type": "kitten_tts",
        "sample_rate": SAMPLE_RATE,
        "hidden_dim": 16,
        "max_conv_dim": 16,
        "max_dur": 8,
        "n_layer": 1,
        "n_mels": 80,
        "n_token": 192,  # covers the text cleaner's symbols (padding, punctuation, letters, IPA)
        "style_dim": STYLE_DIM,
        "text_encoder_kernel_size": 3,
        "asr_res_dim": 8,
        "decoder_out_dim": 16,
        "plbert": {
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "max_position_embeddings": 512,
            "embedding_size": 16,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "istftnet": {
            "resblock_kernel_sizes": [3],
            "upsample_rates": [4, 4],
            "upsample_initial_channel": 16,
            "resblock_dilation_sizes": [[1, 3, 5]],
            "upsample_kernel_sizes": [8, 8],
            "gen_istft_n_fft": 16,
            "gen_istft_hop_size": 4,
        },
    }


def build_tiny_kitten_tts(dst: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and voices.npz under `dst`, as mlx-audio's loader reads them."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_audio.tts.models.kitten_tts.kitten_tts import Model, ModelConfig

    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(config()))
    dst.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dst / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (dst / "config.json").write_text(json.dumps(config(), indent=2) + "\n")
    rng = np.random.default_rng(seed)
    # A voice: one style vector (acoustic | prosodic halves) per input length, as Kitten's voices.npz holds them.
    voices = {name: rng.normal(0, 0.5, (64, 2 * STYLE_DIM)).astype(np.float32) for name in VOICES}
    np.savez(dst / "voices.npz", **voices)
    return dst
