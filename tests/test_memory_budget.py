"""The memory budget as an operator and a client see it: eviction, pinning, waiting, refusal, idle unloads."""

from __future__ import annotations

import contextlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from protocol.ctl import ListModels
from supervisor.ctl_client import CtlClient
from supervisor.model_slot import LEASE_SECONDS
from tests.conftest import BUDGET_GB
from tests.harness import Server, wait_until

GB = 1024**3
BRIEF = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
STORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story about a dragon."}]


def chat(server: Server, model: str, max_tokens: int = 2, **extra) -> httpx.Response:
    body = {"model": model, "messages": BRIEF, "max_tokens": max_tokens, "temperature": 0, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=180)


def models(server: Server) -> dict:
    reply = CtlClient(f"ipc://{server.run_dir}/supervisor.sock").call(lambda call_id: ListModels(call_id=call_id))
    return {m.id: m for m in reply.models} | {"": reply.memory}


def reset(server: Server, *loaded: str) -> None:
    """Unload everything, unpin a, b, c, then load `loaded` in that order (the last is the most recent)."""
    for model in ("a", "b", "c", "ttl"):
        assert server.ctl("unload", model).returncode == 0
    for model in ("a", "b", "c"):
        assert server.ctl("unpin", model).returncode == 0
    for model in loaded:
        assert server.ctl("load", model).returncode == 0


def resident_gb(server: Server) -> float:
    """What the worker processes really hold (RSS), as the machine sees it."""
    total = 0
    for pid in server.worker_pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / GB


def test_concurrent_first_requests_share_one_load(budget_server):
    reset(budget_server)
    spawned = budget_server.log_text().count("spawned worker for a:")
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: chat(budget_server, "a"), range(4)))
    assert [r.status_code for r in replies] == [200] * 4
    assert budget_server.log_text().count("spawned worker for a:") == spawned + 1


def test_a_load_that_does_not_fit_evicts_the_least_recently_used(budget_server):
    reset(budget_server, "b", "a")
    result = budget_server.ctl("load", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "evicted b to make room"
    state = models(budget_server)
    assert [state[m].state for m in "abc"] == ["ready", "stopped", "ready"]
    memory = state[""]
    assert memory.used_bytes <= memory.budget_bytes
    assert state["b"].charged_bytes == 0  # its process is gone, and so is its charge
    assert resident_gb(budget_server) <= BUDGET_GB


def test_a_pinned_model_is_never_evicted(budget_server):
    reset(budget_server, "a", "b")
    assert budget_server.ctl("pin", "a").stdout.strip() == "a pinned"
    result = budget_server.ctl("load", "c")
    assert result.stdout.splitlines()[0] == "evicted b to make room"  # a was least recently used, but pinned
    ps = budget_server.ctl("ps").stdout
    assert "a (pinned)" in ps
    assert budget_server.ctl("unpin", "a").returncode == 0


def test_a_higher_priority_is_evicted_after_lower_ones_even_when_least_recently_used(budget_server):
    reset(budget_server, "c", "a")  # c (priority 1) is the least recently used, a (priority 0) the most
    # A model handed out within LEASE_SECONDS is not yet evictable (a gateway may be about to send to it);
    # with heartbeats every 0.5 s, a pong newer than the lease comes soon after.
    assert wait_until(lambda: models(budget_server)["a"].idle_seconds > LEASE_SECONDS + 1.0, timeout=30)
    result = budget_server.ctl("load", "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "evicted a to make room"
    state = models(budget_server)
    assert [state[m].state for m in "abc"] == ["stopped", "ready", "ready"]


def test_ctl_memory_shows_the_budget_and_each_models_charge(budget_server):
    reset(budget_server, "a")
    result = budget_server.ctl("memory")
    assert result.returncode == 0, result.stderr
    budget, header, *rows = result.stdout.splitlines()
    memory = models(budget_server)[""]
    used, free = re.fullmatch(r"memory budget 0\.75 GB: ([\d.]+) GB used, ([\d.]+) GB free", budget).groups()
    assert float(used) + float(free) == pytest.approx(BUDGET_GB, abs=0.011)
    assert float(used) == pytest.approx(memory.used_bytes / GB, abs=0.006)
    assert header.split() == ["MODEL", "STATE", "CHARGED", "RESIDENT", "ESTIMATE", "PINNED", "PRIORITY"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    state, charged, _, resident, _, estimate, _, pinned, priority = table["a"]
    assert (state, estimate, pinned, priority) == ("ready", "0.30", "no", "0")
    assert float(charged) >= 0.30 and float(charged) == pytest.approx(float(used), abs=0.011)  # a alone is charged
    assert 0.05 < float(resident) <= float(charged)
    assert table["c"] == ["stopped", "-", "-", "0.30", "GB", "no", "1"]
    assert table["huge"] == ["stopped", "-", "-", "5.00", "GB", "no", "0"]


def test_a_busy_model_is_not_evicted_the_request_waits_for_room(budget_server):
    reset(budget_server, "a", "b")
    results = {}

    def stream(model: str, max_tokens: int) -> None:
        body = {"model": model, "messages": STORY, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{budget_server.url}/v1/chat/completions", json=body, timeout=180) as r:
            results[model] = [line for line in r.iter_lines() if line.startswith("data:")]

    threads = [threading.Thread(target=stream, args=("a", 40)), threading.Thread(target=stream, args=("b", 12))]
    for t in threads:
        t.start()
    assert wait_until(lambda: models(budget_server)["a"].in_flight and models(budget_server)["b"].in_flight, 60)
    reply = chat(budget_server, "c")  # both a and b are busy: c waits until one of them is idle
    for t in threads:
        t.join()
    assert reply.status_code == 200, reply.text
    for model in "ab":  # neither stream was cut short by an eviction
        assert results[model][-1] == "data: [DONE]", results[model][-3:]
    state = models(budget_server)
    assert state["a"].state == "ready" and state["c"].state == "ready" and state["b"].state == "stopped"


def test_a_model_larger_than_the_budget_is_refused_at_once(budget_server):
    reply = chat(budget_server, "huge")  # refused before any wait for memory (max_wait_seconds is 90 here)
    assert reply.status_code == 507
    error = reply.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "more than the whole memory budget" in error["message"]
    assert "spawned worker for huge" not in budget_server.log_text()
    assert models(budget_server)["huge"].state == "stopped"


def test_admin_endpoints_load_unload_and_report_memory(budget_server):
    reset(budget_server, "a", "b")
    base = f"{budget_server.url}/api/v1/models"
    loaded = httpx.post(f"{base}/c/load", json={}, timeout=180)
    assert loaded.status_code == 200
    assert loaded.json()["id"] == "c" and loaded.json()["status"] == "loaded" and len(loaded.json()["evicted"]) == 1
    usage = httpx.get(f"{base}/memory/usage").json()
    assert usage["budget_gb"] == BUDGET_GB
    assert set(usage["models_loaded"]) == {"c", *({"a", "b"} - set(loaded.json()["evicted"]))}
    assert usage["used_gb"] == round(sum(usage["models_loaded"].values()), 3)
    assert abs(usage["available_gb"] - (usage["budget_gb"] - usage["used_gb"])) < 0.002
    assert usage["total_gb"] == round(psutil.virtual_memory().total / 1024**3, 3)  # the host's, as in the seed
    unloaded = httpx.post(f"{base}/c/unload", json={}, timeout=60).json()
    assert unloaded["status"] == "unloaded" and unloaded["pid"] > 0
    assert httpx.post(f"{base}/c/unload", json={}, timeout=60).json()["status"] == "not_loaded"
    missing = httpx.post(f"{base}/nope/load", json={}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_idle_ttl_unloads_and_a_request_during_the_unload_is_served(budget_server):
    reset(budget_server)
    ctl = CtlClient(f"ipc://{budget_server.run_dir}/supervisor.sock")
    hit_the_unload = False
    states = []

    def left_ready() -> bool:
        states.append({m.id: m.state for m in ctl.call(lambda call_id: ListModels(call_id=call_id)).models}["ttl"])
        return states[-1] != "ready"

    for _ in range(3):  # the stop of an idle worker is short: catch it while it is under way
        assert chat(budget_server, "ttl").status_code == 200
        assert wait_until(left_ready, timeout=30, interval=0.01), "ttl was not unloaded after 2s idle"
        state = states[-1]
        assert state in ("stopping", "stopped")
        hit_the_unload = state == "stopping"
        reply = chat(budget_server, "ttl")
        assert reply.status_code == 200, reply.text
        if hit_the_unload:
            break
    assert hit_the_unload
    assert "ttl idle for" in budget_server.log_text()


def test_a_request_that_cannot_get_room_in_time_gets_503_and_streams_get_keepalives(tight_server):
    assert chat(tight_server, "x").status_code == 200
    body = {"model": "x", "messages": STORY, "max_tokens": 60, "temperature": 0, "stream": True}
    done = []

    def busy() -> None:
        with httpx.stream("POST", f"{tight_server.url}/v1/chat/completions", json=body, timeout=180) as r:
            done.extend(r.iter_lines())

    thread = threading.Thread(target=busy)
    thread.start()
    assert wait_until(lambda: models(tight_server)["x"].in_flight, 60)
    reply = chat(tight_server, "y")
    assert reply.status_code == 503 and reply.headers["Retry-After"]
    error = reply.json()["error"]
    assert error["code"] == "worker_unavailable" and "busy or pinned" in error["message"]
    # A stream waiting for its model is kept alive with SSE comments, then told why it could not start.
    with httpx.stream("POST", f"{tight_server.url}/v1/chat/completions", json={**body, "model": "y"}, timeout=180) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == ": keepalive" and len([x for x in lines if x == ": keepalive"]) >= 3
    assert '"code":"worker_unavailable"' in lines[-1]
    thread.join()
    assert [line for line in done if line][-1] == "data: [DONE]"
    assert chat(tight_server, "y").status_code == 200  # x is idle now: evicted for y
