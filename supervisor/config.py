"""configs/models.yaml: the models this host may serve, and the supervisor's settings.

Validated into typed structs at start-up, so a typo in the file stops the supervisor with the field's path
instead of surfacing at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import yaml

GB = 1024**3


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the model's worker batches (see worker/batch_engine.py); passed to it as flags."""

    decode_concurrency: int = 16
    prefill_concurrency: int = 4
    prefill_step_size: int = 512
    prompt_cache_mb: int = 512

    def worker_args(self) -> list[str]:
        return [
            f"--{name.replace('_', '-')}={getattr(self, name)}"
            for name in ("decode_concurrency", "prefill_concurrency", "prefill_step_size", "prompt_cache_mb")
        ]


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    # A directory in the model store (a bare name), a path (absolute, ~ or ./), or a hub repo id (org/name).
    source: str
    aliases: list[str] = []
    type: str = "llm"
    memory_gb: float | None = None  # estimate used before the worker reports what it really holds
    context_length: int | None = None  # default: what the model declares
    auto_load: bool = False
    description: str = ""
    engine: EngineSettings = EngineSettings()

    def __post_init__(self) -> None:
        if self.type != "llm":
            raise ValueError(f"model {self.id!r}: type {self.type!r} is not supported yet (supported: llm)")

    @property
    def memory_estimate_bytes(self) -> int:
        return int((self.memory_gb or 0) * GB)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: list[ModelSpec]
    default_model: str | None = None  # for requests that name no model; default: the first one listed
    memory_budget_gb: float = 400.0
    model_store: str = "../models"  # relative to the config file; MLX_MODEL_STORE overrides
    load_timeout_seconds: float = 600.0
    shutdown_grace_seconds: float = 10.0
    heartbeat_seconds: float = 2.0


class Config:
    """Settings plus what they imply: the store location and the id/alias lookup table."""

    def __init__(self, settings: Settings, base_dir: Path):
        self.settings = settings
        # The environment's store is relative to the working directory, the file's to the file.
        env_store = os.environ.get("MLX_MODEL_STORE")
        store = Path(env_store).expanduser() if env_store else base_dir / Path(settings.model_store).expanduser()
        self.store = store.resolve()
        self.base_dir = base_dir
        self.models: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in settings.models:
            for name in (spec.id, *spec.aliases):
                if name in self._names:
                    raise ValueError(f"model name {name!r} is used twice in the config")
                self._names[name] = spec.id
            self.models[spec.id] = spec
        if not settings.models:
            raise ValueError("the config lists no models")
        self.default_model = settings.default_model or settings.models[0].id
        if self.default_model not in self._names:
            raise ValueError(f"default_model {self.default_model!r} is not a configured model")

    def resolve(self, name: str) -> ModelSpec | None:
        """A model by id or alias; the empty name means the default model."""
        model_id = self._names.get(name or self.default_model)
        return None if model_id is None else self.models[model_id]

    def source_of(self, spec: ModelSpec) -> str:
        """What the worker loads: an absolute directory, or a hub repo id left for mlx-lm to fetch."""
        source = spec.source
        if source.startswith(("/", "~", "./", "../")):
            path = Path(source).expanduser()
            return str(path if path.is_absolute() else (self.base_dir / path).resolve())
        if "/" in source:
            return source
        return str(self.store / source)


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        settings = msgspec.convert(raw, Settings)
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Config(settings, path.parent.resolve())
