"""/metrics, the activity log and /system/stats, read as Prometheus and an operator read them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.harness import ROOT, Gateway, free_port
from tests.test_memory_budget import reset

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = "/v1/chat/completions"


def scrape(url: str) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def test_counters_move_by_what_the_requests_did(server, client):
    before = scrape(server.url)
    usage = []
    for _ in range(2):
        reply = client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=8)
        usage.append(reply.usage)
    stream = client.chat.completions.create(
        model="tiny", messages=PARIS, temperature=0, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    usage += [chunk.usage for chunk in stream if chunk.usage]
    missing = httpx.post(f"{server.url}{CHAT}", json={"model": "nope", "messages": PARIS}, timeout=30)
    assert missing.status_code == 404
    after = scrape(server.url)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # No keys are configured: the gateway serves loopback as the development service "local".
    ok = {"route": CHAT, "method": "POST", "status": "200", "service": "local", "model": "smollm2"}
    assert delta("mlx_server_http_requests_total", **ok) == 3  # the alias counts under the model's id
    assert delta("mlx_server_http_requests_total", route=CHAT, status="404", model="") == 1
    mine = {"service": "local", "model": "smollm2"}
    assert delta("mlx_server_completion_tokens_total", **mine) == sum(u.completion_tokens for u in usage)
    assert delta("mlx_server_prompt_tokens_total", **mine) == sum(u.prompt_tokens for u in usage)
    assert delta("mlx_server_time_to_first_token_seconds_count", **mine) == 3
    assert delta("mlx_server_time_to_first_token_seconds_sum", **mine) > 0
    assert delta("mlx_server_http_request_duration_seconds_count", route=CHAT, model="smollm2") == 3
    assert delta("mlx_server_generation_tokens_per_second_count", model="smollm2") == 3
    assert value(after, "mlx_server_http_requests_in_progress") == 1  # the scrape itself

    # The supervisor's view, one value per host.
    assert value(after, "mlx_server_supervisor_up") == 1
    assert value(after, "mlx_server_memory_budget_bytes") == 4 * 2**30  # the harness's default budget
    assert value(after, "mlx_server_model_state", model="smollm2", state="ready") == 1
    assert value(after, "mlx_server_model_state", model="broken", state="ready") == 0
    assert value(after, "mlx_server_model_loads_total", model="smollm2") >= 1
    resident = value(after, "mlx_server_worker_memory_bytes", model="smollm2", kind="resident")
    assert resident > 50 * 2**20
    assert value(after, "mlx_server_worker_memory_bytes", model="smollm2", kind="mlx_active") > 0
    used = value(after, "mlx_server_memory_used_bytes")
    assert used >= value(after, "mlx_server_worker_memory_bytes", model="smollm2", kind="charged") > 0
    assert value(after, "mlx_server_memory_free_bytes") == 4 * 2**30 - used - value(
        after, "mlx_server_memory_reserved_bytes"
    )
    assert ("mlx_server_worker_queue_depth", (("host", "local"), ("model", "smollm2"))) in after  # a single host


def test_activity_log_keeps_each_call_with_a_sanitised_preview(server, client):
    secret = "My key is sk-abcdef1234567890 and my mail bob@example.com. What is the capital of France?"
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": secret}], temperature=0, max_tokens=8
    )
    httpx.get(f"{server.url}/v1/models")  # GET polls are not logged
    log = httpx.get(f"{server.url}/api/activity-logs?limit=5").json()
    newest = log["data"][0]
    assert log["capacity"] == 200 and len(log["data"]) <= 5
    assert newest["route"] == CHAT and newest["model"] == "smollm2" and newest["status"] == 200
    assert newest["service"] == "local" and newest["error"] is None
    assert newest["completion_tokens"] == reply.usage.completion_tokens
    assert newest["prompt_tokens"] == reply.usage.prompt_tokens
    assert newest["latency_ms"] >= newest["ttft_ms"] > 0
    assert newest["preview"] == "My key is [key] and my mail [email]. What is the capital of France?"
    assert "sk-abcdef" not in str(log) and "bob@" not in str(log)

    bad = httpx.get(f"{server.url}/api/activity-logs?limit=zero")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    cleared = httpx.delete(f"{server.url}/api/activity-logs")  # no auth configured: allowed from loopback
    assert cleared.status_code == 200 and cleared.json()["cleared"] >= 1
    [left] = httpx.get(f"{server.url}/api/activity-logs").json()["data"]
    assert (left["method"], left["route"], left["status"]) == ("DELETE", "/api/activity-logs", 200)  # who cleared it


KEYS = {"vista": "vista_k1", "whisplbrx": "whisplbrx_k2", "ops": "ops_k3"}


def test_clearing_needs_an_admin_and_services_see_their_own_calls(tmp_path, monkeypatch):
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - {id: a, source: x}\n"
        "services:\n  - {name: vista}\n  - {name: whisplbrx}\n  - {name: ops, admin: true}\n"
    )
    monkeypatch.setenv("API_KEYS", ",".join(f"{name}:{key}" for name, key in KEYS.items()))
    settings = GatewaySettings(
        supervisor_endpoint=f"ipc://{tmp_path}/none.sock", activity_log_size=3, config_path=str(config)
    )
    app = create_app(settings)

    def as_(service: str) -> dict:
        return {"Authorization": f"Bearer {KEYS[service]}"}

    with TestClient(app) as http:  # its client address is not loopback
        for service in ("vista", "whisplbrx", "vista", "vista"):
            http.post("/v1/chat/completions", content=b"{", headers=as_(service))
        entries = http.get("/api/activity-logs", headers=as_("ops")).json()["data"]
        assert [e["service"] for e in entries] == ["vista", "vista", "whisplbrx"]  # the last 3, newest first
        assert all(e["status"] == 400 for e in entries)
        own = http.get("/api/activity-logs", headers=as_("whisplbrx")).json()["data"]
        assert [e["service"] for e in own] == ["whisplbrx"]
        refused = http.delete("/api/activity-logs", headers=as_("vista"))  # a service without admin rights
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        assert http.delete("/api/activity-logs").status_code == 401  # no key at all
        assert http.delete("/api/activity-logs", headers=as_("ops")).json() == {"cleared": 3}
        [left] = http.get("/api/activity-logs", headers=as_("ops")).json()["data"]
        assert (left["service"], left["method"]) == ("ops", "DELETE")


def test_system_stats_report_the_host_and_what_mlx_cannot_tell(server, client):
    client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=1)
    stats = httpx.get(f"{server.url}/system/stats", timeout=30).json()
    assert stats["cpu"]["logical_cores"] == psutil.cpu_count()
    assert 0 <= stats["cpu"]["percent"] <= 100
    assert stats["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert stats["disk"]["total_bytes"] > 0
    assert stats["gateway"]["pid"] == server.gateway.pid
    accelerator = stats["accelerator"]
    assert accelerator["mlx_version"]
    if accelerator["backend"] == "cpu":  # this host: MLX has no device memory figure, and says so
        assert accelerator["memory_total_bytes"] is None
        assert "memory_total_bytes" in accelerator["absent"]
    worker = stats["workers"]["smollm2"]
    assert worker["pid"] in server.worker_pids()
    assert worker["rss_bytes"] > 50 * 2**20 and worker["mlx_active_bytes"] > 0
    assert stats["budget"]["budget_bytes"] == 4 * 2**30
    assert httpx.get(f"{server.url}/api/v1/system/stats", timeout=30).status_code == 200


@contextlib.contextmanager
def gateways(server, count: int, **env):
    """Extra gateway processes on the session server's supervisor, stopped (by their processes) on the way out."""
    started = []
    try:
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=server.env | {"PORT": str(port), **env},
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            started.append(Gateway(proc, f"http://127.0.0.1:{port}"))
        for gateway in started:
            gateway.wait_ready()
        yield [gateway.url for gateway in started]
    finally:
        for gateway in started:
            gateway.stop()


@pytest.mark.timeout(300)
def test_several_gateway_processes_sum_in_multiprocess_mode(server, tmp_path):
    """Every kind of metric sums over the gateways: counters, histograms (counts and sums), the live gauge."""
    with gateways(server, 2, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)) as (one, two):
        usage = []
        for url, n in ((one, 2), (two, 3)):
            for _ in range(n):
                assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
            body = {"model": "smollm2", "messages": PARIS, "temperature": 0, "max_tokens": 2}
            reply = httpx.post(f"{url}{CHAT}", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            usage.append(reply.json()["usage"])
            assert httpx.post(f"{url}{CHAT}", json={"model": "nope", "messages": PARIS}).status_code == 404
        chat = {"service": "local", "model": "smollm2"}
        for url in (one, two):
            samples = scrape(url)
            assert value(samples, "mlx_server_http_requests_total", route="/v1/models", status="200") == 5
            assert value(samples, "mlx_server_http_requests_total", route=CHAT, status="200") == 2
            assert value(samples, "mlx_server_http_requests_total", route=CHAT, status="404") == 2
            assert value(samples, "mlx_server_completion_tokens_total", **chat) == sum(
                u["completion_tokens"] for u in usage
            )
            assert value(samples, "mlx_server_prompt_tokens_total", **chat) == sum(u["prompt_tokens"] for u in usage)
            assert value(samples, "mlx_server_time_to_first_token_seconds_count", **chat) == 2
            assert value(samples, "mlx_server_http_request_duration_seconds_count", route=CHAT) == 4
            assert value(samples, "mlx_server_http_request_duration_seconds_sum", route=CHAT) > 0
            assert value(samples, "mlx_server_http_requests_in_progress") == 1  # this scrape, in one of them
            assert value(samples, "mlx_server_supervisor_up") == 1  # the host's figures, once
    assert len(os.listdir(tmp_path)) > 0  # prometheus-client's per-process files


def test_evictions_are_counted_for_the_model_evicted(budget_server):
    reset(budget_server, "a", "b")  # the budget holds two; loading c evicts the least recently used, a
    before = scrape(budget_server.url)
    loaded = httpx.post(f"{budget_server.url}/api/v1/models/c/load", json={}, timeout=180).json()
    after = scrape(budget_server.url)
    assert loaded["evicted"] == ["a"]
    for model, moved in (("a", 1), ("b", 0), ("c", 0)):
        evictions = "mlx_server_model_evictions_total"
        assert value(after, evictions, model=model) - value(before, evictions, model=model) == moved
    assert (
        value(after, "mlx_server_model_loads_total", model="c")
        - value(before, "mlx_server_model_loads_total", model="c")
        == 1
    )
    assert value(after, "mlx_server_model_state", model="a", state="stopped") == 1
