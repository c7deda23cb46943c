"""Liveness and readiness: what a load balancer sees when a worker dies, the supervisor is gone, or Redis stops."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from tests.harness import ROOT, RedisServer, Server, gone, short_run_dir, wait_until
from tests.test_metrics import gateways, scrape, value


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/health/ready", timeout=30)


def test_liveness_is_cheap_and_readiness_details_each_component(server, client):
    live = httpx.get(f"{server.url}/api/v1/health")
    assert live.status_code == 200 and live.json()["status"] == "ok" and live.json()["pid"] == server.gateway.pid
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    reply = ready(server.url)
    body = reply.json()
    # "degraded" (still 200) names models that failed to load: other tests try the `broken` model.
    assert reply.status_code == 200 and body["status"] == ("degraded" if body.get("failed_models") else "ready")
    assert body["supervisor"]["ok"] and body["supervisor"]["response_ms"] > 0
    worker = body["workers"]["smollm2"]
    assert worker["ok"] and worker["alive"] and worker["ping_ms"] > 0 and worker["pid"] in server.worker_pids()
    assert "redis" not in body  # not configured


def test_readiness_fails_while_a_killed_worker_is_down_and_recovers_after_reload(server, client):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    pid = ready(server.url).json()["workers"]["smollm2"]["pid"]
    crashes = value(scrape(server.url), "mlx_server_worker_crashes_total", model="smollm2")
    loads = value(scrape(server.url), "mlx_server_model_loads_total", model="smollm2")
    assert server.signal_worker("smollm2").pid == pid
    assert wait_until(lambda: ready(server.url).status_code == 503, 60)
    body = ready(server.url).json()
    assert body["status"] == "not_ready" and body["supervisor"]["ok"]
    assert not body["workers"]["smollm2"]["ok"] and "crashed" in body["workers"]["smollm2"]["error"]
    assert httpx.get(f"{server.url}/api/v1/health").status_code == 200  # the gateway itself is alive
    assert value(scrape(server.url), "mlx_server_worker_crashes_total", model="smollm2") == crashes + 1

    assert httpx.post(f"{server.url}/api/v1/models/smollm2/load", json={}, timeout=180).status_code == 200
    reply = ready(server.url)
    assert reply.status_code == 200 and reply.json()["status"] in ("ready", "degraded")
    assert reply.json()["workers"]["smollm2"]["pid"] not in (None, pid)
    assert value(scrape(server.url), "mlx_server_model_loads_total", model="smollm2") == loads + 1


def test_readiness_without_a_supervisor(server_config):
    run_dir = short_run_dir()  # no supervisor listens here
    try:
        lonely = Server(server_config, run_dir=run_dir)
        with gateways(lonely, 1, READY_PING_TIMEOUT="0.5") as (url,):
            assert httpx.get(f"{url}/api/v1/health").status_code == 200
            reply = ready(url)
            assert reply.status_code == 503 and reply.json()["status"] == "not_ready"
            assert reply.json()["supervisor"]["ok"] is False and "did not answer" in reply.json()["supervisor"]["error"]
            assert value(scrape(url), "mlx_server_supervisor_up") == 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.needs_tool("redis-server")
def test_readiness_checks_redis_when_configured(server):
    redis = RedisServer().start()
    try:
        with gateways(server, 1, REDIS_URL=redis.url, READY_PING_TIMEOUT="1") as (url,):
            assert wait_until(lambda: ready(url).status_code == 200, 60)
            assert ready(url).json()["redis"]["ok"] is True
            process = redis.process
            redis.stop()
            assert gone(process)
            reply = ready(url)  # answered within READY_PING_TIMEOUT, not after Redis's own connect timeout
            assert reply.status_code == 503 and reply.json()["redis"]["ok"] is False
            # redis-py's own words, which depend on the pooled connection's state ("Connection closed by server.",
            # "Error 111 connecting to ..."): present, whatever they are.
            assert isinstance(reply.json()["redis"]["error"], str) and len(reply.json()["redis"]["error"]) > 5
            assert reply.json()["supervisor"]["ok"]
    finally:
        redis.cleanup()


def test_manage_status_agrees_with_readiness(server, client):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    pid = ready(server.url).json()["workers"]["smollm2"]["pid"]
    out = subprocess.run(
        ["bash", "scripts/manage.sh", "status"], env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120
    ).stdout
    status = ready(server.url).json()["status"]  # "degraded" once another test has tried the `broken` model
    assert f'"status":"{status}"' in out and f"smollm2: ready, pid {pid}, pong in" in out
