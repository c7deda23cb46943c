"""Import a model into the model store: a GGUF file, a Hugging Face safetensors directory, a Whisper model
(CTranslate2's format, converted; Hugging Face's or MLX's, copied), or a bundled model.

The result is an MLX model directory (config.json, model.safetensors, tokenizer files) that a worker loads
with mlx-lm (or, for the bundled embedding model, mlx-embeddings: its safetensors load as they are, so they are
copied; Whisper models with mlx-audio, which reads Hugging Face's and MLX's Whisper weights as they are). The
conversion writes into a hidden temporary directory and renames it into place at the end, so an interrupted
import never leaves a half-written model under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec
from tqdm import tqdm

from protocol.store import ConvertOptions
from supervisor.bundled import BUNDLED_PREFIX, BundledModelError, bundled_path
from supervisor.gguf_convert import convert_gguf
from supervisor.model_store import StoreError, check_name, write_metadata
from supervisor.whisper_convert import Ct2FormatError, convert_ct2_whisper, is_ct2_whisper

AS_SAVED = ConvertOptions()  # a safetensors directory converted as it is: no quantization, its own dtype
_NOT_COPIED = shutil.ignore_patterns("README.md", ".gitattributes", "__pycache__")


class ModelImportError(ValueError):
    pass


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="step", leave=True)


def _convert_hf(src: Path, dst: Path, options: ConvertOptions) -> None:
    from mlx_lm import convert

    with _progress(1, "converting safetensors") as bar:
        convert(hf_path=str(src), mlx_path=str(dst), quantize=options.quantize, q_bits=options.q_bits,
                q_group_size=options.q_group_size, dtype=options.dtype)  # fmt: skip
        bar.update(1)


def _is_whisper(path: Path) -> bool:
    """A Whisper directory in Hugging Face's format (model_type whisper) or mlx-whisper's (n_audio_ctx, weights.npz)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (config.get("model_type") == "whisper" or "n_audio_ctx" in config)


def import_model(src: str, name: str, store: Path, *, force: bool = False,
                 convert: ConvertOptions = AS_SAVED) -> Path:  # fmt: skip
    """Convert `src` into `store/name` (a safetensors directory with `convert`'s options); returns the model
    directory. Its metadata (model_store.py) says where it came from."""
    bundled = src.startswith(BUNDLED_PREFIX)
    try:
        path = bundled_path(src.removeprefix(BUNDLED_PREFIX)) if bundled else Path(src).expanduser()
    except BundledModelError as exc:
        raise ModelImportError(str(exc)) from None
    if not path.exists():
        raise ModelImportError(f"{path} does not exist")
    try:
        check_name(name)
    except StoreError as exc:
        raise ModelImportError(str(exc)) from None
    dst = store / name
    if dst.exists() and not force:
        raise ModelImportError(f"{dst} already exists (use --force to replace it)")
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if path.is_file() and path.suffix == ".gguf":
            try:
                # MLX-native types (Q4_0/Q4_1/Q8_0) as they are, other types at their nearest bits; --quantize
                # with --q-bits requantizes every tensor at those bits.
                bits = convert.q_bits if convert.quantize else None
                convert_gguf(path, tmp, progress_factory=_progress, bits=bits, group_size=convert.q_group_size)
            except (ValueError, RuntimeError) as exc:  # unreadable or unsupported: the reason, not a traceback
                raise ModelImportError(f"{path} cannot be imported: {exc}") from exc
        elif is_ct2_whisper(path):
            with _progress(1, "converting CTranslate2 Whisper") as bar:
                try:
                    convert_ct2_whisper(path, tmp)
                except (Ct2FormatError, KeyError) as exc:  # KeyError: a variable a Whisper spec must have
                    reason = f"{path} is not a CTranslate2 Whisper model this importer reads: {exc}"
                    raise ModelImportError(reason) from None
                bar.update(1)
        elif _is_whisper(path) or (bundled and path.is_dir()):  # mlx-audio reads HF and MLX Whisper as they are
            shutil.copytree(path, tmp, ignore=_NOT_COPIED)
        elif path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            _convert_hf(path, tmp, convert)
        else:
            raise ModelImportError(
                f"{path} is neither a .gguf file, a Hugging Face safetensors directory nor a Whisper model"
            )
        converted = msgspec.to_builtins(convert) if convert.converts and path.is_dir() and not bundled else None
        write_metadata(tmp, source=src if bundled else str(path.resolve()), convert=converted)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
