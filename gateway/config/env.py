"""The gateway's settings from the environment (12-factor: one gateway image, many deployments). The config
file's part is in file.py; both are imported from gateway.config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path

from protocol.launch import ctl_endpoint, run_dir_from_env


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 9123
    supervisor_endpoint: str = ""
    load_timeout: float = 600.0  # how long a request may wait for its model to load
    silence_timeout: float = 600.0  # longest gap between two events of one generation before giving up
    connect_timeout: float = 10.0  # how long to wait for a worker socket to connect
    keepalive_seconds: float = 5.0  # a stream waiting for its model sends an SSE comment this often
    # A fleet: how often each host gets a heartbeat, and how long one that does not answer stays up.
    host_heartbeat_seconds: float = 1.0
    host_down_after_seconds: float = 3.0
    log_level: str = "INFO"
    ready_ping_timeout: float = 2.0  # readiness: how long each ready worker has to answer its ping
    activity_log_size: int = 200  # requests the activity log keeps
    run_dir: str = "run"  # /system/stats reports the disk that holds it
    data_dir: str = "run/data"  # the Files API's files and, without Redis, the batches' state
    # Embeddings and rerank requests that name no model go to this one (the bundled all-MiniLM-L6-v2).
    embedding_model: str = "all-minilm-l6-v2"
    # Audio requests that name no model (and whose service has no default model) go to these.
    transcription_model: str = "whisper-tiny.en"
    speech_model: str = ""
    # Uploads to /v1/audio/transcriptions and /translations: larger files are 413, longer audio 400.
    max_audio_bytes: int = 25 * 2**20  # OpenAI's limit
    max_audio_seconds: float = 3 * 3600.0
    # Image inputs: size and pixel limits; http(s) image URLs are fetched only when enabled, within a time limit.
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 50_000_000
    max_images: int = 16  # per request, over all its messages
    image_urls: bool = False
    # Networks (CIDRs) an image URL or its redirects may reach although they are not public (loopback, private,
    # link-local...): none by default.
    image_url_networks: tuple[str, ...] = ()
    image_fetch_timeout: float = 10.0  # for the whole fetch: resolving, connecting, redirects, the body
    log_format: str = "json"  # or "text"
    config_path: str | None = None  # the shared config file (services, gateway settings); None: the default
    # Secrets stay out of repr(), so a settings object that reaches a log line does not carry them.
    redis_url: str | None = field(default=None, repr=False)  # sessions and rate limits; None: in memory
    jwt_secret: str | None = field(default=None, repr=False)  # signs the tokens of /api/v1/auth/token
    tls_certfile: str | None = None  # override the config's gateway.tls
    tls_keyfile: str | None = None

    @classmethod
    def from_env(cls) -> GatewaySettings:
        run_dir = run_dir_from_env()
        return cls(
            host=os.environ.get("HOST", cls.host),
            port=int(os.environ.get("PORT", cls.port)),
            supervisor_endpoint=ctl_endpoint(run_dir),
            load_timeout=float(os.environ.get("GATEWAY_LOAD_TIMEOUT", cls.load_timeout)),
            silence_timeout=float(os.environ.get("GATEWAY_SILENCE_TIMEOUT", cls.silence_timeout)),
            keepalive_seconds=float(os.environ.get("GATEWAY_KEEPALIVE_SECONDS", cls.keepalive_seconds)),
            host_heartbeat_seconds=float(os.environ.get("HOST_HEARTBEAT_SECONDS", cls.host_heartbeat_seconds)),
            host_down_after_seconds=float(os.environ.get("HOST_DOWN_AFTER_SECONDS", cls.host_down_after_seconds)),
            log_level=os.environ.get("LOG_LEVEL", cls.log_level).upper(),
            ready_ping_timeout=float(os.environ.get("READY_PING_TIMEOUT", cls.ready_ping_timeout)),
            activity_log_size=int(os.environ.get("ACTIVITY_LOG_SIZE", cls.activity_log_size)),
            run_dir=str(run_dir),
            data_dir=str(Path(os.environ.get("MLX_SERVER_DATA_DIR") or run_dir / "data").resolve()),
            embedding_model=os.environ.get("EMBEDDING_DEFAULT_MODEL", cls.embedding_model),
            transcription_model=os.environ.get("TRANSCRIPTION_DEFAULT_MODEL", cls.transcription_model),
            speech_model=os.environ.get("SPEECH_DEFAULT_MODEL", cls.speech_model),
            max_audio_bytes=int(os.environ.get("GATEWAY_MAX_AUDIO_BYTES", cls.max_audio_bytes)),
            max_audio_seconds=float(os.environ.get("GATEWAY_MAX_AUDIO_SECONDS", cls.max_audio_seconds)),
            max_image_bytes=int(os.environ.get("GATEWAY_MAX_IMAGE_BYTES", cls.max_image_bytes)),
            max_image_pixels=int(os.environ.get("GATEWAY_MAX_IMAGE_PIXELS", cls.max_image_pixels)),
            max_images=int(os.environ.get("GATEWAY_MAX_IMAGES", cls.max_images)),
            image_urls=os.environ.get("GATEWAY_IMAGE_URLS", "0").lower() in ("1", "true", "yes"),
            image_url_networks=tuple(  # a malformed network stops the gateway at start-up
                str(ip_network(n.strip(), strict=False))
                for n in os.environ.get("GATEWAY_IMAGE_URL_NETWORKS", "").split(",")
                if n.strip()
            ),
            image_fetch_timeout=float(os.environ.get("GATEWAY_IMAGE_FETCH_TIMEOUT", cls.image_fetch_timeout)),
            log_format=os.environ.get("LOG_FORMAT", cls.log_format).lower(),
            config_path=os.environ.get("MLX_SERVER_CONFIG") or None,
            redis_url=os.environ.get("REDIS_URL") or None,
            jwt_secret=os.environ.get("JWT_SECRET") or None,
            tls_certfile=os.environ.get("TLS_CERTFILE") or None,
            tls_keyfile=os.environ.get("TLS_KEYFILE") or None,
        )
