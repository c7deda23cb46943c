"""A request whose worker dies before answering it: sent again to a new worker only when the worker was killed
from outside (SIGKILL, as the OOM killer sends); not when it crashed by a fault of its own, which the request
may have caused (a poison request would take the new worker down too).

No request a client can send crashes a worker any more (the engines contain what a request causes), so the
fault is the worker's test-only hook: MLX_WORKER_TEST_FAULT_TRACE names an X-Request-ID that makes the worker
exit with an error as the request reaches its generation loop (worker/generation_thread.py).
"""

from __future__ import annotations

import secrets
import signal
import threading

import httpx
import pytest

from tests.conftest import SHARED
from tests.harness import Server, gone, wait_until, write_config
from tests.test_metrics import scrape, value

POISON = "poison-" + secrets.token_hex(6)
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
BODY = {"model": "p", "messages": PARIS, "temperature": 0, "max_tokens": 4}


@pytest.fixture(scope="module")
def poison_server(tmp_path_factory, model_store):
    config = write_config(tmp_path_factory.mktemp("poison") / "models.yaml", model_store, [{"id": "p", **SHARED}])
    srv = Server(config)
    srv.env["MLX_WORKER_TEST_FAULT_TRACE"] = POISON
    yield srv.start()
    srv.stop()


def crashes(server: Server) -> float:
    return value(scrape(server.url), "mlx_server_worker_crashes_total", model="p")


def ask(server: Server, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=BODY, headers=headers, timeout=180)


def test_a_request_that_crashes_its_worker_is_not_sent_to_the_next(poison_server):
    assert ask(poison_server).status_code == 200  # loaded before we start
    before, first = crashes(poison_server), poison_server.worker("p")
    reply = ask(poison_server, **{"X-Request-ID": POISON})
    assert reply.status_code == 500, reply.text
    error = reply.json()["error"]
    assert error["code"] == "worker_crashed" and "not sent again" in error["message"]
    assert "retry-after" not in reply.headers  # retrying it would crash a worker again
    assert gone(first)
    assert crashes(poison_server) == before + 1  # its worker alone: the successor never saw it
    assert poison_server.log_text().count("carries the test fault trace") == 1
    # The model is served again at once, by the worker started to replace the crashed one.
    again = ask(poison_server)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"]
    assert crashes(poison_server) == before + 1


def test_a_request_whose_worker_is_killed_from_outside_is_sent_again_and_answered(poison_server):
    assert ask(poison_server).status_code == 200
    expected = ask(poison_server).json()["choices"][0]["message"]["content"]
    before, worker = crashes(poison_server), poison_server.worker("p")
    idle = value(scrape(poison_server.url), "mlx_server_http_requests_in_progress")
    worker.suspend()  # SIGSTOP: the request waits in the worker's socket, unanswered
    outcome = {}
    asker = threading.Thread(target=lambda: outcome.update(reply=ask(poison_server)))
    try:
        asker.start()
        assert wait_until(
            lambda: value(scrape(poison_server.url), "mlx_server_http_requests_in_progress") > idle, timeout=60
        )
        worker.send_signal(signal.SIGKILL)  # as the OOM killer would, before any token came out
    finally:
        asker.join(timeout=180)
    assert not asker.is_alive(), "the request hung after its worker was killed"
    reply = outcome["reply"]
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == expected  # greedy: the new worker's same answer
    assert gone(worker) and crashes(poison_server) == before + 1
