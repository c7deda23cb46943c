"""What happens when workers die, clients leave and supervisors vanish: errors, never hangs."""

from __future__ import annotations

import signal
import threading

import httpx
import openai
import pytest

from protocol.ctl import Status
from supervisor.ctl_client import CtlClient
from tests.harness import Server, gone, wait_until

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def _ctl(server: Server) -> CtlClient:
    return CtlClient(f"ipc://{server.run_dir}/supervisor.sock")


def _model(server: Server, model_id: str = "smollm2"):
    report = _ctl(server).call(lambda call_id: Status(call_id=call_id))
    return next(m for m in report.models if m.id == model_id)


def test_worker_killed_mid_stream_ends_the_stream_with_an_error(client, server):
    stream = client.chat.completions.create(model="smollm2", messages=STORY, temperature=0, max_tokens=300, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
            if len(received) == 2:  # role chunk, then the first text: the worker is mid-generation
                killed = server.signal_worker("smollm2", signal.SIGKILL)
    assert caught.value.code == "worker_crashed"
    assert "exited during the request" in caught.value.message
    assert gone(killed)
    # The next request starts a new worker.
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=16,
    )  # fmt: skip
    assert "Paris" in reply.choices[0].message.content


def generating(server: Server, model_id: str = "smollm2") -> int:
    """Requests of the model's worker past their first token (in flight, less those still queued or in prefill)."""
    model = _model(server, model_id)
    return model.in_flight - model.queued


def test_worker_killed_during_a_non_streaming_request_gives_503(client, server):
    client.chat.completions.create(model="smollm2", messages=STORY, max_tokens=1)  # loaded before we start
    outcome = {}

    def ask():
        try:
            client.chat.completions.create(model="smollm2", messages=STORY, temperature=0, max_tokens=300)
        except openai.APIStatusError as exc:
            outcome["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    assert wait_until(lambda: generating(server) == 1, timeout=60)  # its first token is out of the worker
    # ...and in the gateway: a stream started now gets its first token on the same connection after the first
    # request's, so once this client has one, the gateway has the first request's too. (Killed before the
    # gateway saw a token, the request would be resent to a new worker, invisibly.)
    body = {"model": "smollm2", "messages": STORY, "temperature": 0, "max_tokens": 300, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for line in lines:  # up to its first text
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                break
        server.signal_worker("smollm2", signal.SIGKILL)
        rest = list(lines)
    asker.join(timeout=120)
    assert not asker.is_alive(), "the request hung after its worker died"
    error = outcome["error"]
    assert error.status_code == 503
    assert error.code == "worker_crashed"
    assert int(error.response.headers["retry-after"]) >= 1
    assert '"code":"worker_crashed"' in [line for line in rest if line.startswith("data:")][-1]


def test_client_disconnect_aborts_the_generation(server, client):
    client.chat.completions.create(model="smollm2", messages=STORY, max_tokens=1)
    body = {"model": "smollm2", "messages": STORY, "temperature": 0, "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        assert _model(server).in_flight == 1
    # Connection closed after the first chunk: the worker must drop the sequence, not finish 1000 tokens.
    assert wait_until(lambda: _model(server).in_flight == 0, timeout=60)


def test_ctl_load_ps_unload_round_trip(server, client):
    loaded = server.ctl("load", "tiny")
    assert loaded.returncode == 0, loaded.stderr
    assert "smollm2 ready" in loaded.stdout
    ps = server.ctl("ps")
    assert ps.returncode == 0
    row = next(line.split() for line in ps.stdout.splitlines() if line.startswith("smollm2"))
    assert row[1] == "ready"
    pid = int(row[2])
    worker = server.worker("smollm2")
    assert worker.pid == pid
    assert float(row[3]) > 0.05 and row[4] == "GB"  # CHARGED to the budget
    assert float(row[5]) > 0.05 and row[6] == "GB"  # RESIDENT, as the worker reports it
    assert row[10] in {"cpu:", "gpu"}  # COMPUTE: what the worker chose, e.g. "cpu: openblas, float32"

    status = server.ctl("status")
    assert status.returncode == 0 and "pong in" in status.stdout

    unloaded = server.ctl("unload", "smollm2")
    assert unloaded.returncode == 0, unloaded.stderr
    assert f"pid {pid} stopped" in unloaded.stdout
    assert gone(worker)
    row = next(line.split() for line in server.ctl("ps").stdout.splitlines() if line.startswith("smollm2"))
    assert row[1:3] == ["stopped", "-"]

    # The next request loads it again, on demand.
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=2
    )
    assert reply.usage.completion_tokens >= 1


def test_ctl_unknown_model_exits_1_with_a_clear_message(server):
    for command in ("load", "unload"):
        result = server.ctl(command, "no-such-model")
        assert result.returncode == 1
        assert "no-such-model" in result.stderr and "does not exist" in result.stderr


def test_ctl_without_a_supervisor_says_so(tmp_path):
    env = {"MLX_SERVER_RUN_DIR": str(tmp_path)}
    srv = Server(config=tmp_path / "unused.yaml", run_dir=tmp_path)
    srv.env |= env
    result = srv.ctl("ps", timeout=60)
    assert result.returncode == 3
    assert "is `supervisor run` started?" in result.stderr


def test_workers_exit_when_their_supervisor_is_killed(server_config):
    srv = Server(server_config)
    srv.start_supervisor()
    try:
        assert wait_until(lambda: (srv.run_dir / "supervisor.sock").exists(), timeout=30)
        result = srv.ctl("load", "smollm2")
        assert result.returncode == 0, result.stderr
        [worker] = srv.worker_processes()
        srv.supervisor.kill()  # SIGKILL: no chance to clean up
        srv.supervisor.wait()
        assert wait_until(lambda: gone(worker), timeout=30), "worker outlived its supervisor"
    finally:
        srv.stop()


def test_client_that_gives_up_on_a_non_streaming_request_frees_the_worker(server, client):
    client.chat.completions.create(model="smollm2", messages=STORY, max_tokens=1)
    body = {"model": "smollm2", "messages": STORY, "temperature": 0, "max_tokens": 1000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=3))
    # Without the disconnect watch the worker would go on for 1000 tokens (minutes on this CPU).
    assert wait_until(lambda: _model(server).in_flight == 0, timeout=60)


def test_request_right_after_a_crash_gets_a_new_worker(client, server):
    client.chat.completions.create(model="smollm2", messages=STORY, max_tokens=1)
    old = server.signal_worker("smollm2", signal.SIGKILL).pid
    # No waiting: the gateway may learn of the crash before the supervisor has reaped the process.
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=2
    )
    assert reply.usage.completion_tokens >= 1
    assert _model(server).pid not in (None, old)
