"""Gateway settings, from the environment (12-factor: one gateway image, many deployments)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 9123
    supervisor_endpoint: str = ""
    load_timeout: float = 600.0  # how long a request may wait for its model to load
    silence_timeout: float = 600.0  # longest gap between two events of one generation before giving up
    connect_timeout: float = 10.0  # how long to wait for a worker socket to connect
    keepalive_seconds: float = 5.0  # a stream waiting for its model sends an SSE comment this often
    log_level: str = "INFO"
    # Embeddings and rerank requests that name no model go to this one (the bundled all-MiniLM-L6-v2).
    embedding_model: str = "all-minilm-l6-v2"

    @classmethod
    def from_env(cls) -> GatewaySettings:
        run_dir = Path(os.environ.get("MLX_SERVER_RUN_DIR", "run")).resolve()
        return cls(
            host=os.environ.get("HOST", cls.host),
            port=int(os.environ.get("PORT", cls.port)),
            supervisor_endpoint=os.environ.get("SUPERVISOR_ENDPOINT") or f"ipc://{run_dir}/supervisor.sock",
            load_timeout=float(os.environ.get("GATEWAY_LOAD_TIMEOUT", cls.load_timeout)),
            silence_timeout=float(os.environ.get("GATEWAY_SILENCE_TIMEOUT", cls.silence_timeout)),
            keepalive_seconds=float(os.environ.get("GATEWAY_KEEPALIVE_SECONDS", cls.keepalive_seconds)),
            log_level=os.environ.get("LOG_LEVEL", cls.log_level).upper(),
            embedding_model=os.environ.get("EMBEDDING_DEFAULT_MODEL", cls.embedding_model),
        )
