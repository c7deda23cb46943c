"""Real server processes for tests: a supervisor and a gateway, held as psutil processes and stopped by them.

Every process a test starts is recorded here (`track`), as is every run directory a server uses; at the end of
the session conftest fails the run, naming them, if any such process is still alive. A psutil.Process checks
the process's identity (its start time) before it signals it, so a pid reused by another process is never hit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Every server log of the test run is appended here when its server stops (conftest greps it for test keys).
LOG_ARCHIVE = Path(tempfile.gettempdir()) / f"mlxs-test-logs-{os.getpid()}.log"
STARTED: list[psutil.Process] = []  # every process a test started (or saw its server start)
RUN_DIRS: set[str] = set()  # every MLX_SERVER_RUN_DIR a test server used: its processes carry it in their env


def track(process: int | psutil.Process) -> psutil.Process:
    """Record a process this test run started (a pid, or a psutil.Process); the session fails if it outlives the
    run."""
    process = process if isinstance(process, psutil.Process) else psutil.Process(process)
    if process not in STARTED:
        STARTED.append(process)
    return process


def gone(process: psutil.Process) -> bool:
    """Exited (or a zombie awaiting its parent); a pid now used by another process counts as gone."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def left_running() -> list[psutil.Process]:
    """Processes of this test run still alive: those tracked, and any carrying one of its run directories."""
    alive = [p for p in STARTED if not gone(p)]
    for process in psutil.process_iter():
        try:
            if process.environ().get("MLX_SERVER_RUN_DIR") in RUN_DIRS and process not in alive:
                alive.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in alive if not gone(p)]


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:160]}"
    except psutil.Error:
        return f"pid {process.pid}"


def kill(process: psutil.Process) -> None:
    """SIGKILL, if it is still the process it was (psutil checks), and reap it if it is our child."""
    try:
        process.kill()
        process.wait(timeout=10)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass


def workers_of(supervisor: subprocess.Popen | None, seen: list[psutil.Process]) -> list[psutil.Process]:
    """The live worker processes of a supervisor (its children), each tracked and remembered in `seen`."""
    if supervisor is None or supervisor.poll() is not None:
        return []
    try:
        children = psutil.Process(supervisor.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        if child not in seen:
            seen.append(track(child))
    return [c for c in children if not gone(c)]


def reap(workers: list[psutil.Process]) -> None:
    """After their supervisor stopped: workers exit with it, and one that does not (a SIGSTOPped one) is killed."""
    for process in workers:
        if not wait_until(lambda p=process: gone(p), timeout=10):
            kill(process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_run_dir() -> Path:
    # ipc:// paths must stay under ~100 bytes, so not under pytest's deep tmp_path.
    path = Path(tempfile.mkdtemp(prefix="mlxs-", dir="/tmp"))
    RUN_DIRS.add(str(path))
    return path


def write_config(path: Path, store: Path, models: list[dict], **settings) -> Path:
    config = {
        "memory_budget_gb": 4,
        "model_store": str(store),
        "load_timeout_seconds": 120,
        "shutdown_grace_seconds": 5,
        "heartbeat_seconds": 1,
        **settings,
        "models": models,
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Server:
    def __init__(self, config: Path, run_dir: Path | None = None):
        self.config = config
        self._owns_run_dir = run_dir is None
        self.run_dir = run_dir or short_run_dir()
        RUN_DIRS.add(str(self.run_dir))
        self.port = free_port()
        self.env = os.environ | {
            "MLX_SERVER_RUN_DIR": str(self.run_dir),
            "MLX_SERVER_CONFIG": str(config),  # the gateway reads its services and settings from it
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
        }
        for name in ("SUPERVISOR_ENDPOINT", "MLX_MODEL_STORE", "API_KEYS", "REDIS_URL", "JWT_SECRET"):
            self.env.pop(name, None)
        self.supervisor: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self.extra_gateways: list[Gateway] = []
        self._workers_seen: list[psutil.Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "server.log"

    def log_text(self) -> str:
        """What the supervisor, its workers and the gateway logged, as an operator would read it."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen([sys.executable, *args], env=env or self.env, cwd=ROOT, stdout=log, stderr=log)
        track(proc.pid)
        return proc

    def spawn_gateway(self, **env: str) -> Gateway:
        """Another gateway process in front of this server's supervisor, on a port of its own, with `env` on top of
        this server's environment; it logs to the same file and stops with the server."""
        port = free_port()
        proc = self._popen("-m", "gateway", env=self.env | {"PORT": str(port)} | env)
        gateway = Gateway(proc, f"http://127.0.0.1:{port}")
        self.extra_gateways.append(gateway)
        return gateway

    def start_supervisor(self) -> None:
        self.supervisor = self._popen("-m", "supervisor", "run", "--config", str(self.config))

    def start_gateway(self) -> None:
        self.gateway = self._popen("-m", "gateway")

    def start(self) -> Server:
        self.start_supervisor()
        self.start_gateway()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health/ready", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        tail = self.log_text()[-3000:]
        self.stop()
        raise RuntimeError(f"server did not become ready within 60s; its log ends:\n{tail}")

    def restart(self) -> Server:
        """Stop every process and start again on the same port and run directory: what survives is on disk."""
        self.stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.start()

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "ctl", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker_processes(self) -> list[psutil.Process]:
        """Live worker processes of this supervisor (its children), remembered so `stop` can check on them."""
        return workers_of(self.supervisor, self._workers_seen)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.worker_processes()]

    def models(self) -> dict:
        """Each model's ModelInfo as the supervisor reports it (`ctl ps` reads the same), and the budget under ""."""
        from protocol.ctl import ListModels
        from supervisor.ctl_client import CtlClient

        reply = CtlClient(f"ipc://{self.run_dir}/supervisor.sock").call(lambda call_id: ListModels(call_id=call_id))
        return {m.id: m for m in reply.models} | {"": reply.memory}

    def worker(self, model_id: str) -> psutil.Process:
        """The live worker of `model_id`: the pid the supervisor reports, checked to be one of its children."""
        pid = self.models()[model_id].pid
        assert pid is not None, f"{model_id} has no worker"
        [process] = [p for p in self.worker_processes() if p.pid == pid]
        return process

    def signal_worker(self, model_id: str, sig: int = signal.SIGKILL) -> psutil.Process:
        """Send `sig` to the worker of `model_id` (psutil checks that the pid is still that process)."""
        process = self.worker(model_id)
        process.send_signal(sig)
        return process

    def stop(self) -> None:
        self.worker_processes()
        for gateway in self.extra_gateways:
            gateway.stop()
        for proc in (self.gateway, self.supervisor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.gateway, self.supervisor):
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reap(self._workers_seen)
        if self.log_path.exists():
            with LOG_ARCHIVE.open("a", errors="replace") as archive:
                archive.write(self.log_text())
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


class Gateway:
    """A gateway process started by a test, stopped by its pid."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc = proc
        self.url = url
        track(proc.pid)

    def wait_ready(self, timeout: float = 120, path: str = "/api/v1/health", **client) -> Gateway:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}")
            try:
                httpx.get(f"{self.url}{path}", timeout=5, **client)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the gateway at {self.url} did not answer within {timeout}s")

    def stop(self) -> None:
        terminate(self.proc, grace=20)


class RedisServer:
    """A real redis-server on a free loopback port, without persistence, started and stopped by its pid."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mlxs-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", *args, "--dir", str(self.dir)], stdout=log, stderr=log, cwd=self.dir
            )
        self.process = track(self.proc.pid)
        if not wait_until(self.answers, timeout=20):
            self.stop()
            raise RuntimeError(f"redis-server did not answer on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; reaped either way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def killed_mid_stream(client, model: str, prompt: str, process: psutil.Process):
    """Stream a long greedy chat completion through the openai SDK `client` and SIGKILL `process` once the first
    text has arrived (mid-generation): the openai.APIError the stream ended with, or None if it ended without."""
    import openai

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=400, temperature=0, stream=True
    )
    try:
        for received, _ in enumerate(stream, 1):
            if received == 2:  # the role chunk, then the first text
                process.send_signal(signal.SIGKILL)
    except openai.APIError as exc:
        return exc
    return None
