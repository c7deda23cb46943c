"""TLS: the gateway serves HTTPS with a configured certificate and key, and `./scripts/start_server.sh prod`
starts the whole server that way (stopped again with `./scripts/manage.sh stop`)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import SHARED, secret
from tests.harness import (
    LOG_ARCHIVE,
    ROOT,
    Gateway,
    free_port,
    gone,
    kill,
    short_run_dir,
    track,
    wait_until,
    write_config,
)


def trusting(cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


pytestmark = pytest.mark.needs_tool("openssl")  # makes the certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (and localhost)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_gateway_serves_https_with_the_configured_certificate(tmp_path, model_store, certificate):
    cert, key = certificate
    config = write_config(
        tmp_path / "models.yaml",
        model_store,
        [{"id": "smollm2", **SHARED}],
        services=[{"name": "vista"}],
        gateway={"tls": {"certfile": str(cert), "keyfile": str(key)}},
    )
    api_key = secret("vista_")
    port = free_port()
    env = os.environ | {"MLX_SERVER_CONFIG": str(config), "PORT": str(port), "API_KEYS": f"vista:{api_key}"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    gateway = Gateway(proc, f"https://127.0.0.1:{port}")
    try:
        gateway.wait_ready(verify=trusting(cert))
        reply = httpx.post(f"{gateway.url}/api/v1/sessions", headers={"x-api-key": api_key}, verify=trusting(cert))
        assert reply.status_code == 201
        assert httpx.get(f"{gateway.url}/api/v1/sessions", verify=trusting(cert)).status_code == 401
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on that port
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
    finally:
        gateway.stop()


def test_start_server_prod_serves_tls_and_manage_stops_it(tmp_path, model_store, certificate):
    cert, key = certificate
    run_dir = short_run_dir()
    config = write_config(tmp_path / "models.yaml", model_store, [{"id": "smollm2", **SHARED}])
    port = free_port()
    api_key = secret("ops_")
    config_data = yaml.safe_load(config.read_text()) | {"services": [{"name": "ops", "admin": True}]}
    config.write_text(yaml.safe_dump(config_data))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET", "API_KEYS")} | {
        "MLX_SERVER_CONFIG": str(config),
        "MLX_SERVER_RUN_DIR": str(run_dir),
        "MLX_MODEL_STORE": str(model_store),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "TLS_CERTFILE": str(cert),
        "TLS_KEYFILE": str(key),
        "API_KEYS": f"ops:{api_key}",
    }
    processes = []
    try:
        started = subprocess.run(
            ["./scripts/start_server.sh", "prod"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        if (run_dir / "honcho.pid").exists():
            processes.append(track(int((run_dir / "honcho.pid").read_text())))
        assert started.returncode == 0, started.stderr
        assert f"https://127.0.0.1:{port}" in started.stdout
        url = f"https://127.0.0.1:{port}"

        def healthy():
            try:
                return httpx.get(f"{url}/api/v1/health", verify=trusting(cert), timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(healthy, timeout=90), (run_dir / "server.log").read_text()
        processes += [track(p) for p in processes[0].children(recursive=True)]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8},
            headers={"Authorization": f"Bearer {api_key}"},
            verify=trusting(cert),
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        status = subprocess.run(["./scripts/manage.sh", "status"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert '"status":"ready"' in status.stdout.replace(" ", "")
        processes += [track(p) for p in processes[0].children(recursive=True)]
        stopped = subprocess.run(["./scripts/manage.sh", "stop"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert wait_until(lambda: all(gone(p) for p in processes), 30)
    finally:
        for process in processes:  # belt and braces; psutil checks each is still the process it was
            kill(process)
        log = run_dir / "server.log"
        if log.exists():  # into the run's log archive, which is checked for test keys
            with LOG_ARCHIVE.open("a", errors="replace") as archive:
                archive.write(log.read_text(errors="replace"))
        shutil.rmtree(run_dir, ignore_errors=True)
