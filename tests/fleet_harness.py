"""A fleet for tests: two supervisors on this machine as hosts `a` and `b` (each on a loopback TCP port of its
own, with its own run directory and key pair, serving over CURVE) and a gateway in front of both, every one a
real process, held as a psutil process (tests/harness.py's `track`) and stopped by it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from protocol.ctl import Heartbeat, HostAlive, ListModels, ModelList
from protocol.curve import KeyPair, key_pair_from_file, make_key_pair, public_key
from supervisor.ctl_client import CtlClient, SupervisorUnreachable
from tests.harness import (
    LOG_ARCHIVE,
    ROOT,
    Gateway,
    free_port,
    reap,
    short_run_dir,
    terminate,
    track,
    wait_until,
    workers_of,
    write_config,
)

HOSTS = ("a", "b")


class FleetHost:
    """One host's supervisor (its workers are its children)."""

    def __init__(self, fleet: Fleet, name: str):
        self.fleet, self.name = fleet, name
        self.run_dir = short_run_dir()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._workers_seen: list[psutil.Process] = []

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.fleet.root / f"host-{self.name}.log"

    def start(self) -> FleetHost:
        env = self.fleet.env | {
            "MLX_SERVER_RUN_DIR": str(self.run_dir),
            "MLX_HOST_KEY": str(self.fleet.keys / f"{self.name}.key_secret"),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "run", "--config", str(self.fleet.config), "--host", self.name],
                env=env, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        track(self.proc.pid)
        if not wait_until(self.answers, timeout=60):
            raise RuntimeError(f"host {self.name} did not answer within 60s:\n{self.log_text()[-3000:]}")
        return self

    def client(self, keys: KeyPair | None = None) -> CtlClient:
        """A ctl client of this host over TCP, with the gateway's keys (or `keys`)."""
        server_key = public_key(str(self.fleet.keys / f"{self.name}.key"))
        return CtlClient(self.endpoint, timeout=180, curve=(keys or self.fleet.client_keys, server_key))

    def answers(self) -> bool:
        try:
            return isinstance(self.client().call(lambda call_id: Heartbeat(call_id=call_id), timeout=2), HostAlive)
        except SupervisorUnreachable:
            return False

    def models(self) -> ModelList:
        return self.client().call(lambda call_id: ListModels(call_id=call_id))

    def worker_processes(self) -> list[psutil.Process]:
        """Its live workers (its children), remembered so `stop` can check on them."""
        return workers_of(self.proc, self._workers_seen)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.worker_processes()]

    def signal_worker(self, model_id: str, sig: int) -> psutil.Process | None:
        """Send `sig` to the worker of `model_id`, if it has one (psutil checks the pid is still that process)."""
        pid = next((m.pid for m in self.models().models if m.id == model_id), None)
        process = next((p for p in self.worker_processes() if p.pid == pid), None)
        if process is not None:
            process.send_signal(sig)
        return process

    def kill(self) -> None:
        """SIGKILL the supervisor: no chance to clean up (its workers go when their lifeline closes)."""
        self.worker_processes()
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.worker_processes()
        if self.proc is not None:
            terminate(self.proc, grace=20)
        reap(self._workers_seen)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Fleet:
    def __init__(self, root: Path, store: Path, models: list[dict], host_settings: dict | None = None, **settings):
        self.root = root
        self.keys = root / "keys"
        for name in (*HOSTS, "gateway"):
            make_key_pair(self.keys, name)
        self.client_keys = key_pair_from_file(self.keys / "gateway.key_secret")
        self.hosts = {name: FleetHost(self, name) for name in HOSTS}
        hosts = [
            dict(
                name=h.name,
                endpoint=h.endpoint,
                public_key=f"keys/{h.name}.key",
                **(host_settings or {}).get(h.name, {}),
            )
            for h in self.hosts.values()
        ]  # host_settings: more of a host's entry (its memory_budget_gb), by name
        self.config = write_config(
            root / "models.yaml", store, models, hosts=hosts, host_clients=["keys/gateway.key"], **settings
        )
        self.port = free_port()
        unset = ("SUPERVISOR_ENDPOINT", "MLX_MODEL_STORE", "API_KEYS", "REDIS_URL", "JWT_SECRET")
        unset += ("MLX_FLEET_KEY", "MLX_FLEET_SECRET_KEY", "MLX_HOST_KEY", "MLX_SERVER_HOST")
        self.env = {k: v for k, v in os.environ.items() if k not in unset} | {
            "MLX_SERVER_CONFIG": str(self.config),
            "MLX_SERVER_CPU_TUNING": "off",  # 4-bit weights as loaded: resident stays under the 0.3 GB estimates
            "LOG_LEVEL": "INFO",
        }
        self.gateway: Gateway | None = None
        self.gateway_run_dir = short_run_dir()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def secrets(self) -> list[str]:
        return [key_pair_from_file(self.keys / f"{n}.key_secret").secret.decode() for n in (*HOSTS, "gateway")]

    def start_gateway(self) -> Gateway:
        env = self.env | {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "MLX_FLEET_KEY": str(self.keys / "gateway.key_secret"),
            "MLX_SERVER_RUN_DIR": str(self.gateway_run_dir),
            "HOST_HEARTBEAT_SECONDS": "0.5",
            "HOST_DOWN_AFTER_SECONDS": "2",
        }
        with (self.root / "gateway.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=log, stderr=log)
        self.gateway = Gateway(proc, self.url).wait_ready(timeout=60)
        if not wait_until(lambda: self.hosts_up() == set(HOSTS), timeout=30):
            raise RuntimeError(f"the gateway did not see both hosts up:\n{self.log_text('gateway')[-3000:]}")
        return self.gateway

    def hosts_up(self) -> set[str]:
        """The hosts the gateway's readiness finds up."""
        ready = httpx.get(f"{self.url}/api/v1/health/ready", timeout=30).json()
        return {name for name, check in ready.get("hosts", {}).items() if check["ok"]}

    def start(self) -> Fleet:
        try:
            for host in self.hosts.values():
                host.start()
            self.start_gateway()
        except Exception:
            self.stop()
            raise
        return self

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """`supervisor ctl ARGS` as an operator of the fleet runs it, with the gateway's key pair."""
        env = self.env | {"MLX_FLEET_KEY": str(self.keys / "gateway.key_secret")}
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "ctl", *args, "--config", str(self.config)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def log_text(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for host in self.hosts.values():
            host.stop()
        with LOG_ARCHIVE.open("a", errors="replace") as archive:  # checked for secrets at the session's end
            for path in sorted(self.root.glob("*.log")):
                archive.write(path.read_text(errors="replace"))
        for run_dir in (self.gateway_run_dir, *(host.run_dir for host in self.hosts.values())):
            shutil.rmtree(run_dir, ignore_errors=True)
