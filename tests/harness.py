"""Real server processes for tests: a supervisor and a gateway started by pid and stopped by pid."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_run_dir() -> Path:
    # ipc:// paths must stay under ~100 bytes, so not under pytest's deep tmp_path.
    return Path(tempfile.mkdtemp(prefix="mlxs-", dir="/tmp"))


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
        self.port = free_port()
        self.env = os.environ | {
            "MLX_SERVER_RUN_DIR": str(self.run_dir),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
        }
        self.env.pop("SUPERVISOR_ENDPOINT", None)
        self.env.pop("MLX_MODEL_STORE", None)
        self.supervisor: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self._workers_seen: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "server.log"

    def log_text(self) -> str:
        """What the supervisor, its workers and the gateway logged, as an operator would read it."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _popen(self, *args: str) -> subprocess.Popen:
        with self.log_path.open("ab") as log:
            return subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT, stdout=log, stderr=log)

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
        self.stop()
        raise RuntimeError("server did not become healthy within 60s")

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "ctl", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker_pids(self) -> list[int]:
        """Live worker processes of this supervisor (its children)."""
        if self.supervisor is None or self.supervisor.poll() is not None:
            return []
        pids = [p.pid for p in psutil.Process(self.supervisor.pid).children(recursive=True)]
        self._workers_seen.update(pids)
        return pids

    def stop(self) -> None:
        self.worker_pids()
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
        for pid in self._workers_seen:  # belt and braces: no worker outlives the test session
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
