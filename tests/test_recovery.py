"""Crash recovery: crash loops, wedged workers, and workers left behind by a supervisor that was killed."""

from __future__ import annotations

import json
import signal
import threading

import httpx

from tests.harness import Server, gone, wait_until
from tests.test_memory_budget import STORY, chat, models, reset


def test_a_model_that_keeps_crashing_is_marked_failed_until_an_operator_loads_it(budget_server):
    reset(budget_server, "c")
    for crash in range(2):  # the server allows one crash in its window; the second marks it failed
        budget_server.signal_worker("c", signal.SIGKILL)
        assert wait_until(lambda: models(budget_server)["c"].state != "ready", 60)
        if crash == 0:
            assert models(budget_server)["c"].state == "stopped"
            assert chat(budget_server, "c").status_code == 200  # the next request restarts it
    state = models(budget_server)["c"]
    assert state.state == "failed" and "2 crashes within 300s" in state.last_error
    assert "failed" in budget_server.ctl("ps").stdout
    health = httpx.get(f"{budget_server.url}/api/v1/health/ready").json()
    assert "crashes" in health["failed_models"]["c"] and health["status"] == "degraded"
    reply = chat(budget_server, "c")
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "model_failed"
    assert "supervisor ctl load c" in reply.json()["error"]["message"]
    assert budget_server.ctl("load", "c").returncode == 0
    assert chat(budget_server, "c").status_code == 200


def test_a_wedged_worker_is_killed_and_its_stream_gets_an_error(tight_server):
    assert chat(tight_server, "x").status_code == 200
    worker = tight_server.worker("x")
    body = {"model": "x", "messages": STORY, "max_tokens": 200, "temperature": 0, "stream": True}
    lines = []
    with httpx.stream("POST", f"{tight_server.url}/v1/chat/completions", json=body, timeout=180) as r:
        for line in r.iter_lines():
            lines.append(line)
            if len([x for x in lines if x.startswith("data:")]) == 2:
                worker.send_signal(signal.SIGSTOP)  # alive, but its generation loop answers nothing
    assert last_error(lines)["code"] == "worker_crashed"
    # The stream ends when the worker's sockets close, a moment before its exit is complete.
    assert wait_until(lambda: gone(worker), 30)
    assert "answered no ping" in tight_server.log_text()
    assert chat(tight_server, "x").status_code == 200


def last_error(lines: list[str]) -> dict:
    """The error of an OpenAI stream that ended with an error event (its last data line)."""
    last = [line for line in lines if line.startswith("data:")][-1]
    return json.loads(last.removeprefix("data: "))["error"]


def test_worker_killed_mid_stream_gives_an_error_event_when_its_socket_closes(budget_server):
    """Not after the gateway's silence timeout: the closed connection itself ends the stream."""
    reset(budget_server, "a")
    body = {"model": "a", "messages": STORY, "max_tokens": 200, "temperature": 0, "stream": True}
    killed, lines = None, []
    with httpx.stream("POST", f"{budget_server.url}/v1/chat/completions", json=body, timeout=180) as r:
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data:") and killed is None and '"content":""' not in line:
                killed = budget_server.signal_worker("a", signal.SIGKILL)
    error = last_error(lines)
    assert error["code"] == "worker_crashed" and "exited during the request" in error["message"]
    assert "data: [DONE]" not in lines
    assert gone(killed) and chat(budget_server, "a").status_code == 200


def test_a_restarted_supervisor_stops_workers_its_predecessor_left(server_config):
    srv = Server(server_config)
    srv.start_supervisor()
    try:
        assert wait_until(lambda: (srv.run_dir / "supervisor.sock").exists(), timeout=30)
        assert srv.ctl("load", "smollm2").returncode == 0
        [worker] = srv.worker_processes()
        worker.send_signal(signal.SIGSTOP)  # frozen, it cannot notice its lifeline closing
        srv.supervisor.kill()
        srv.supervisor.wait()
        assert not gone(worker)  # stopped, it outlives its supervisor (until the next one starts)
        srv.start_supervisor()
        assert wait_until(lambda: gone(worker), timeout=30), "the new supervisor left the orphan running"
        # It says so once the sweep is done, a moment after the kill.
        assert wait_until(lambda: f"stopped orphan worker pid {worker.pid}" in srv.log_text(), timeout=30)
        assert srv.ctl("ps").returncode == 0
    finally:
        srv.stop()


def test_an_unload_drains_the_request_in_flight(budget_server):
    reset(budget_server, "a")
    body = {"model": "a", "messages": STORY, "max_tokens": 12, "temperature": 0, "stream": True}
    lines = []

    def stream() -> None:
        with httpx.stream("POST", f"{budget_server.url}/v1/chat/completions", json=body, timeout=180) as r:
            lines.extend(r.iter_lines())

    thread = threading.Thread(target=stream)
    thread.start()
    assert wait_until(lambda: models(budget_server)["a"].in_flight, 60)
    worker = budget_server.worker("a")
    result = budget_server.ctl("unload", "a")
    thread.join()
    assert result.returncode == 0 and f"pid {worker.pid} stopped" in result.stdout
    assert "data: [DONE]" in lines  # finished, not cut off
    assert gone(worker) and models(budget_server)["a"].charged_bytes == 0
