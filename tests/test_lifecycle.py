"""Lifecycle: however the stack that `./scripts/start_server.sh dev` starts is stopped (Ctrl-C, `manage.sh stop`,
SIGTERM or SIGHUP to the launcher's process group, SIGKILL of honcho), none of its processes (honcho, the log
tee, the supervisor, the gateway, the worker, the shells and uv between them) remains after the grace period."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import MODEL
from tests.harness import ROOT, free_port, short_run_dir, wait_until, write_config

PACKAGES = ("gateway", "supervisor", "worker", "protocol")
GRACE = 60  # seconds: the config's 2 s worker grace, honcho's 5 s before SIGKILL, and a loaded machine's slowness


@pytest.fixture(scope="module")
def dev_config(tmp_path_factory, model_store) -> Path:
    """The README's dev stack with only the small LLM, loaded at start-up so a worker is running when it stops."""
    model = {"id": MODEL, "source": MODEL, "context_length": 2048, "memory_gb": 0.3, "auto_load": True}
    path = tmp_path_factory.mktemp("lifecycle") / "models.yaml"
    return write_config(path, model_store, [model], shutdown_grace_seconds=2)


class Stack:
    """`./scripts/start_server.sh dev` (or `command`) in a process group of its own, as a terminal runs a
    foreground job."""

    def __init__(self, config: Path, store: Path, command: tuple[str, ...] = ("./scripts/start_server.sh", "dev")):
        self.run_dir = short_run_dir()
        self.port = free_port()
        self.env = os.environ | {
            "PORT": str(self.port),
            "MLX_SERVER_RUN_DIR": str(self.run_dir),
            "MLX_MODEL_STORE": str(store),  # the session's imported models: nothing is imported into ./models
            "MLX_SERVER_CONFIG": str(config),
        }
        for name in ("API_KEYS", "REDIS_URL", "JWT_SECRET", "SUPERVISOR_ENDPOINT", "MLX_SERVER_LAUNCHER_PID"):
            self.env.pop(name, None)
        self.output = self.run_dir / "terminal.log"
        with self.output.open("wb") as terminal:
            self.launcher = subprocess.Popen(
                list(command),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=terminal,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes: list[psutil.Process] = []

    def wait_until_serving(self) -> None:
        def worker_ready() -> bool:
            assert self.launcher.poll() is None, f"start_server.sh exited:\n{self.output.read_text()[-3000:]}"
            try:
                models = httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=5).json()["data"]
            except (httpx.TransportError, ValueError, KeyError):
                return False
            return models[0]["state"] == "ready"

        assert wait_until(worker_ready, timeout=240, interval=0.5), self.output.read_text()[-3000:]
        root = psutil.Process(self.launcher.pid)
        self.processes = [root, *root.children(recursive=True)]  # psutil.Process remembers each one's identity
        commands = " ".join(" ".join(_cmdline(p)) for p in self.processes)
        for part in ("honcho", "supervisor run", "-m gateway", "-m worker", "tee"):
            assert part in commands, f"{part} not found in the stack's processes: {commands}"

    def honcho(self) -> psutil.Process:
        [honcho] = [p for p in psutil.Process(self.launcher.pid).children() if "honcho" in " ".join(_cmdline(p))]
        return honcho

    def remaining(self) -> list[psutil.Process]:
        return [p for p in self.processes if _running(p)]

    def log(self) -> str:
        return (self.run_dir / "server.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for process in self.remaining():  # only after a failure: by pid, identity-checked by psutil
            process.kill()
        if self.launcher.poll() is None:
            self.launcher.kill()
        self.launcher.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ctrl_c(stack: Stack) -> None:
    os.killpg(stack.launcher.pid, signal.SIGINT)  # what the terminal sends its foreground process group


def manage_stop(stack: Stack) -> None:
    result = subprocess.run(["./scripts/manage.sh", "stop"], cwd=ROOT, env=stack.env, capture_output=True, text=True)
    assert result.returncode == 0 and "server: stopped" in result.stdout, result.stdout + result.stderr
    assert "SIGKILL" not in result.stdout  # it stopped within manage.sh's 30 s


def sigterm_to_the_group(stack: Stack) -> None:
    os.killpg(stack.launcher.pid, signal.SIGTERM)  # a process manager or CI wrapper: kill -TERM -- -PGID


def sighup_to_the_group(stack: Stack) -> None:
    os.killpg(stack.launcher.pid, signal.SIGHUP)  # the terminal closed


def sigkill_of_honcho(stack: Stack) -> None:
    stack.honcho().kill()


@pytest.mark.parametrize(
    "stop",
    [ctrl_c, manage_stop, sigterm_to_the_group, sighup_to_the_group, sigkill_of_honcho],
    ids=lambda f: f.__name__,
)
def test_no_process_of_the_stack_remains_however_it_is_stopped(dev_config, model_store, stop):
    stack = Stack(dev_config, model_store)
    try:
        stack.wait_until_serving()
        stop(stack)
        assert wait_until(lambda: not stack.remaining(), timeout=GRACE, interval=0.5), [
            (p.pid, " ".join(_cmdline(p))[:80]) for p in stack.remaining()
        ]
        if stop in (ctrl_c, sigterm_to_the_group):  # the log tee outlived the signal: honcho's shutdown is logged
            assert "sending SIGTERM to supervisor" in stack.log()
    finally:
        stack.cleanup()


def test_the_service_units_command_serves_and_stops_as_systemd_stops_it(dev_config, model_store, tmp_path):
    """What `ctl service install` makes systemd run (its ExecStart), stopped the way systemd stops a unit: SIGTERM
    to every process of it."""
    from tests.test_service_install import ctl_service, parse_unit

    unit = parse_unit(ctl_service(tmp_path, "install", "--print", "--platform", "linux").stdout)
    stack = Stack(dev_config, model_store, command=tuple(shlex.split(unit["Service"]["ExecStart"])))
    try:
        stack.wait_until_serving()
        assert "MLX LLM Server (prod, foreground)" in stack.output.read_text()
        sigterm_to_the_group(stack)
        assert wait_until(lambda: not stack.remaining(), timeout=GRACE, interval=0.5), [
            (p.pid, " ".join(_cmdline(p))[:80]) for p in stack.remaining()
        ]
        assert "sending SIGTERM to supervisor" in stack.log()
    finally:
        stack.cleanup()


def test_env_example_lists_every_variable_the_readme_names_and_the_code_reads():
    sources = [path.read_text() for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    read = {
        name for text in sources for name in re.findall(r'(?:environ(?:\.get)?[\[(]|_ENV = )"([A-Z][A-Z0-9_]+)"', text)
    }
    constants = {name for text in sources for name in re.findall(r"^([A-Z][A-Z0-9_]+)\b[^=\n]*=", text, re.MULTILINE)}
    readme = set(re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", (ROOT / "README.md").read_text())) - constants
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert {"PORT", "REDIS_URL"} <= readme and {"MLX_SERVER_RUN_DIR", "REDIS_URL"} <= read
    assert readme - listed == set() and read - listed == set()
