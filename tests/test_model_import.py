"""Importing the bundled GGUF into an MLX model directory, and refusing what cannot be imported."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

from tests.conftest import EMBEDDER, MODEL
from tests.harness import ROOT


def test_bundled_gguf_becomes_an_mlx_model_directory(model_store):
    model_dir = model_store / MODEL
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["rope_traditional"] is True  # GGUF's interleaved Q/K layout
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert not [p for p in model_store.iterdir() if p.name.startswith(".")], "a temporary directory was left"


def run_import(*args):
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "ctl", "import", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_refuses_to_overwrite_without_force(model_store):
    result = run_import(f"bundled:{MODEL}", "--store", str(model_store))
    assert result.returncode == 1
    assert "already exists" in result.stdout and "--force" in result.stdout


def test_import_of_a_broken_gguf_leaves_nothing_behind(tmp_path):
    # A well-formed GGUF v3 header with no tensors and no metadata, then one whose version field is 0.
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    unreadable = tmp_path / "bogus.gguf"
    unreadable.write_bytes(b"GGUF" + b"\x00" * 64)
    store = tmp_path / "store"
    result = run_import(str(empty), "empty", "--store", str(store))
    assert result.returncode == 1
    assert f"error: {empty} cannot be imported: GGUF metadata lacks 'general.architecture'" in result.stdout
    unread = run_import(str(unreadable), "bogus", "--store", str(store))
    assert unread.returncode == 1 and f"error: {unreadable} cannot be imported: " in unread.stdout
    assert "version 0" in unread.stdout  # the reader's own words, not a traceback
    for each in (result, unread):
        assert "Traceback" not in each.stdout + each.stderr
    assert store.is_dir() and list(store.iterdir()) == []  # no model, no temporary directory


def test_import_names_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run_import(str(tmp_path / "notes.txt"), "notes", "--store", str(tmp_path / "store"))
    assert result.returncode == 1
    assert "neither a .gguf file, a Hugging Face safetensors directory nor a Whisper model" in result.stdout
    missing = run_import(str(tmp_path / "nope.gguf"), "nope", "--store", str(tmp_path / "store"))
    assert missing.returncode == 1 and "does not exist" in missing.stdout


def test_bundled_embedding_model_is_copied_as_mlx_embeddings_loads_it(model_store):
    model_dir = model_store / EMBEDDER
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert (model_dir / name).is_file(), name
    assert not (model_dir / "README.md").exists()
