"""Public endpoints say little: readiness and liveness without an admin key give the status and each component's
ok flag only; /metrics asks for a key when `gateway.metrics_key` is configured. Through the real secured server."""

from __future__ import annotations

import httpx
import yaml

from tests.conftest import secret
from tests.test_metrics import gateways
from tests.test_security import gateway_alone


def ready(url: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/health/ready", headers={"x-api-key": key} if key else {}, timeout=30)


def test_readiness_details_only_for_an_admin_key(secure_server, keys):
    admin = ready(secure_server.url, keys.ops)
    assert admin.status_code == 200 and admin.json()["supervisor"]["pid"] > 0 and "failed_models" in admin.json()
    for key in (None, keys.vista, "ops_not-a-key"):  # no key, a service that is no admin, a wrong key
        brief = ready(secure_server.url, key)
        assert brief.status_code == admin.status_code
        assert brief.json() == {
            "status": admin.json()["status"],
            "supervisor": {"ok": True},
            "workers": {"ok": all(w["ok"] for w in admin.json()["workers"].values())},
            "redis": {"ok": True},
        }
    live = httpx.get(f"{secure_server.url}/api/v1/health", timeout=30).json()
    assert live["status"] == "ok" and "pid" not in live
    assert httpx.get(f"{secure_server.url}/health", headers={"x-api-key": keys.ops}).json()["pid"] > 0


def test_metrics_open_by_default_and_keyed_when_configured(secure_server, keys, tmp_path):
    assert httpx.get(f"{secure_server.url}/metrics", timeout=30).status_code == 200  # no metrics_key: open
    config = yaml.safe_load(secure_server.config.read_text())
    config["gateway"]["metrics_key"] = "METRICS_KEYS"
    keyed_config = tmp_path / "models.yaml"
    keyed_config.write_text(yaml.safe_dump(config))
    scraper = secret("prom-")
    with gateways(secure_server, 1, MLX_SERVER_CONFIG=str(keyed_config), METRICS_KEYS=f"old-key, {scraper}") as (url,):
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
            ({"x-api-key": keys.vista}, 401),  # a service's key, not an admin's
            ({"Authorization": f"Bearer {scraper}"}, 200),
            ({"x-api-key": keys.ops}, 200),  # any admin key
        ):
            reply = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
            assert reply.status_code == status, (headers, reply.text)
        assert "mlx_server_http_requests" in reply.text
        assert reply.status_code == 200
    refused = gateway_alone(keyed_config, OPS_KEYS=keys.ops)  # METRICS_KEYS unset: fail closed
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "METRICS_KEYS" in out and "unset or empty" in out
