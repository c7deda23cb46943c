"""The model store: one directory per model, named as a config's `source:` names it, each with its metadata in a
small JSON file of its own (`.store.json`: where it came from, the revision and commit it was pulled at, how it
was converted, when). The metadata is written before the directory is moved into place, so a model and its
metadata appear together or not at all.

Hidden entries are not models: an unfinished pull (`.pull-NAME`, kept so that pulling again resumes it), an
import in progress, the aliases added at run time (`.aliases.json`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from protocol.store import StoredModel

METADATA = ".store.json"
PARTIAL_PULL = ".pull-"  # + name: a pull's download directory until the model is complete


class StoreError(ValueError):
    pass


def check_name(name: str) -> str:
    """A model's directory name: one plain path component."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 200:
        raise StoreError(f"invalid model name {name!r}: use a plain directory name (not hidden, no '/')")
    return name


def write_metadata(model_dir: Path, **fields) -> None:
    fields.setdefault("added", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (model_dir / METADATA).write_text(json.dumps({k: v for k, v in fields.items() if v is not None}, indent=1))


def read_metadata(model_dir: Path) -> dict:
    try:
        data = json.loads((model_dir / METADATA).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def quantization(model_dir: Path) -> str:
    """What the weights are, from config.json: "4-bit, group 64" (MLX quantized), else their dtype."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("bits"):
        return f"{quant['bits']}-bit, group {quant.get('group_size', '?')}"
    dtype = config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get("dtype")
    return str(dtype or "")


def describe(path: Path, used_by: list[str]) -> StoredModel:
    partial = path.name.startswith(PARTIAL_PULL)
    meta = read_metadata(path)
    return StoredModel(
        name=path.name.removeprefix(PARTIAL_PULL) if partial else path.name,
        size_bytes=size_on_disk(path),
        source=meta.get("source", ""),
        revision=meta.get("revision"),
        commit=meta.get("commit"),
        quantization="" if partial else quantization(path),
        used_by=used_by,
        added=meta.get("added", ""),
        partial=partial,
    )


def entries(store: Path) -> list[Path]:
    """The store's models and unfinished pulls, by name."""
    if not store.is_dir():
        return []
    found = [p for p in store.iterdir() if p.is_dir() and (p.name[0] != "." or p.name.startswith(PARTIAL_PULL))]
    return sorted(found, key=lambda p: p.name.removeprefix(PARTIAL_PULL))


def partial_dir(store: Path, name: str) -> Path:
    return store / f"{PARTIAL_PULL}{name}"


def take_away(path: Path) -> Path:
    """Rename `path` out of the way at once (a hidden name), so nothing loads it while it is deleted."""
    doomed = path.with_name(f".removing-{path.name}-{time.monotonic_ns()}")
    path.rename(doomed)
    return doomed


def delete(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
