"""The supervisor settings the README promises, on a server of their own: `pinned` and `auto_load` models load at
start-up, a worker that ignores SIGTERM is killed after `shutdown_grace_seconds`, `max_waiting_requests` bounds
the requests waiting for a load, and crashes further apart than `crash_window_seconds` do not fail a model."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SHARED
from tests.harness import Server, gone, wait_until, write_config

GRACE = 2
WINDOW = 3
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def settings_server(tmp_path_factory, model_store):
    config = write_config(
        tmp_path_factory.mktemp("settings") / "models.yaml",
        model_store,
        [
            {"id": "pinned", **SHARED, "pinned": True},
            {"id": "eager", **SHARED, "auto_load": True},
            {"id": "lazy", **SHARED},
        ],
        memory_budget_gb=2,
        shutdown_grace_seconds=GRACE,
        max_waiting_requests=2,
        crash_limit=1,
        crash_window_seconds=WINDOW,
    )
    srv = Server(config)
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"  # 4-bit weights as loaded: three small workers
    yield srv.start()
    srv.stop()


def chat(server: Server, model: str) -> httpx.Response:
    body = {"model": model, "messages": PARIS, "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=180)


def state(server: Server, model: str) -> str:
    return server.models()[model].state


def test_pinned_and_auto_load_models_are_loaded_at_start_up_and_others_are_not(settings_server):
    # No request has named any model yet: the supervisor loads these two on its own.
    assert wait_until(lambda: state(settings_server, "pinned") == state(settings_server, "eager") == "ready", 180)
    models = settings_server.models()
    assert models["pinned"].pinned and not models["eager"].pinned
    assert (models["lazy"].state, models["lazy"].pid) == ("stopped", None)
    assert "/v1/chat/completions" not in settings_server.log_text()
    ps = settings_server.ctl("ps").stdout
    assert "pinned (pinned)" in ps


def test_requests_beyond_max_waiting_requests_are_refused_while_a_model_loads(settings_server):
    """Four first requests for a stopped model: two may wait for its load (max_waiting_requests: 2), the others
    are told at once to come back."""
    assert state(settings_server, "lazy") == "stopped"
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: chat(settings_server, "lazy"), range(4)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 503, 503], [r.text for r in replies]
    for refused in (r for r in replies if r.status_code == 503):
        error = refused.json()["error"]
        assert error["code"] == "worker_unavailable" and "already waiting for models to load" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
    assert chat(settings_server, "lazy").status_code == 200  # loaded now: nothing waits


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(settings_server):
    assert wait_until(lambda: state(settings_server, "eager") == "ready", 180)
    worker = settings_server.signal_worker("eager", signal.SIGSTOP)  # wedged: it cannot act on SIGTERM
    result = settings_server.ctl("unload", "eager")
    assert result.returncode == 0, result.stderr
    assert f"pid {worker.pid} stopped" in result.stdout
    assert gone(worker)
    log = settings_server.log_text()
    assert f"worker eager (pid {worker.pid}) ignored SIGTERM for {GRACE}s: SIGKILL" in log
    assert f"eager stopped (pid {worker.pid}, killed by SIGKILL)" in log
    # A worker that answers SIGTERM drains and exits on its own, with no SIGKILL.
    assert chat(settings_server, "lazy").status_code == 200
    lazy = settings_server.worker("lazy")
    assert settings_server.ctl("unload", "lazy").returncode == 0
    assert f"lazy stopped (pid {lazy.pid}, exit code 0)" in settings_server.log_text()


def test_crashes_further_apart_than_the_window_do_not_fail_the_model(settings_server):
    """One crash is allowed within crash_window_seconds (3 s here); two inside it fail the model (test_recovery
    shows that), two further apart leave it restartable."""
    assert chat(settings_server, "lazy").status_code == 200
    settings_server.signal_worker("lazy", signal.SIGKILL)
    assert wait_until(lambda: state(settings_server, "lazy") != "ready", 30)
    assert state(settings_server, "lazy") == "stopped"
    assert chat(settings_server, "lazy").status_code == 200  # restarted
    # The new worker started after the first crash: once it has run longer than the window, so has the crash.
    assert wait_until(lambda: (settings_server.models()["lazy"].uptime_seconds or 0) > WINDOW + 0.5, 60)
    settings_server.signal_worker("lazy", signal.SIGKILL)
    assert wait_until(lambda: state(settings_server, "lazy") != "ready", 30)
    model = settings_server.models()["lazy"]
    assert model.state == "stopped" and "crashes within" not in model.last_error
    assert chat(settings_server, "lazy").status_code == 200
