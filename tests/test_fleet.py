"""Several hosts behind one gateway, as operators and clients see them: two supervisors on this machine serving
over TCP and CURVE (hosts a and b), the bundled models split between them, keys that let in only who they
should, a host killed mid-stream and back, a session kept on its replica, a gateway restarted."""

from __future__ import annotations

import contextlib
import socket
import threading

import httpx
import msgspec
import pytest
import zmq
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from protocol import PROTOCOL_VERSION, encode
from protocol.ctl import CallFailed, ListModels, Load, Unload, reply_decoder
from protocol.curve import KeyPair, fingerprint, secure_client
from protocol.generation import GenerateRequest
from supervisor.ctl_client import CtlClient, SupervisorUnreachable
from tests.conftest import FLEET_BUDGET_GB
from tests.fleet_harness import HOSTS
from tests.harness import wait_until

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def openai(fleet) -> OpenAI:
    return OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0, timeout=300)


def states(fleet, model: str) -> dict[str, str]:
    """The model's state on each host that may run it, as the hosts' supervisors say."""
    listed = {name: {m.id: m.state for m in host.models().models} for name, host in fleet.hosts.items()}
    return {name: models[model] for name, models in listed.items() if model in models}


def in_flight(fleet, host: str, model: str) -> int:
    """The model's requests in flight on `host`, as its supervisor last heard from the worker."""
    return next((m.in_flight for m in fleet.hosts[host].models().models if m.id == model), 0)


def test_the_openai_sdk_gets_answers_from_both_hosts_and_every_view_lists_both(fleet):
    client = openai(fleet)
    reply = client.chat.completions.create(model="tiny", messages=PARIS, temperature=0, max_tokens=8)
    assert "Paris" in reply.choices[0].message.content
    vectors = client.embeddings.create(model="minilm", input=["A cat naps in the sun."])
    assert len(vectors.data[0].embedding) == 384
    assert states(fleet, "minilm") == {"b": "ready"}  # allowed on b only: a does not even list it
    assert "ready" in states(fleet, "chat").values()

    ps = fleet.ctl("ps", "--all")
    assert ps.returncode == 0, ps.stderr
    section_a, section_b = ps.stdout.split("\n\n")
    assert section_a.startswith(f"host a ({fleet.hosts['a'].endpoint})")
    assert section_b.startswith(f"host b ({fleet.hosts['b'].endpoint})")
    assert "minilm" not in section_a and any(line.split()[:2] == ["minilm", "ready"] for line in section_b.splitlines())
    assert fleet.ctl("status", "--host", "b").stdout.count("pong in") >= 1

    memory = httpx.get(f"{fleet.url}/api/v1/models/memory/usage", timeout=30).json()
    assert {name: view["up"] for name, view in memory["hosts"].items()} == {"a": True, "b": True}
    assert memory["budget_gb"] == pytest.approx(2 * FLEET_BUDGET_GB)
    assert "minilm" in memory["hosts"]["b"]["models_loaded"] and "minilm" in memory["models_loaded"]

    listed = {m["id"]: m for m in httpx.get(f"{fleet.url}/v1/models", timeout=30).json()["data"]}
    assert set(listed["chat"]["hosts"]) == {"a", "b"} and listed["minilm"]["hosts"] == {"b": "ready"}

    text = httpx.get(f"{fleet.url}/metrics", timeout=30).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
    assert samples[("mlx_server_supervisor_up", (("host", "a"),))] == 1
    assert samples[("mlx_server_supervisor_up", (("host", "b"),))] == 1
    assert samples[("mlx_server_model_state", (("host", "b"), ("model", "minilm"), ("state", "ready")))] == 1


def test_a_client_without_an_allowed_key_gets_nothing(fleet):
    host = fleet.hosts["a"]
    before = {(m.id, m.state, m.pid) for m in host.models().models}
    intruder = KeyPair(*zmq.curve_keypair())
    for client in (host.client(intruder), CtlClient(host.endpoint, timeout=3)):  # a wrong key, and no key at all
        for call in (
            lambda call_id: ListModels(call_id=call_id),
            lambda call_id: Load(call_id=call_id, model="spare"),
            lambda call_id: Unload(call_id=call_id, model="chat"),
        ):
            with pytest.raises(SupervisorUnreachable):
                client.call(call, timeout=3)
    # A plain TCP client gets the first bytes of ZeroMQ's greeting, then the door shuts: no reply, no data.
    received = b""
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as conn:
        conn.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n" + encode(ListModels(call_id="c")))
        with contextlib.suppress(ConnectionResetError):  # closed, or reset: either way the end
            while chunk := conn.recv(4096):
                received += chunk
    assert len(received) <= 10 and received[:1] in (b"", b"\xff")
    assert {(m.id, m.state, m.pid) for m in host.models().models} == before  # nothing changed

    # A worker's data plane lets in the same keys only.
    located = host.client().call(lambda call_id: Load(call_id=call_id, model="chat"))
    assert located.endpoint.startswith("tcp://127.0.0.1:")
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as dealer:
        dealer.linger = 0
        secure_client(dealer, intruder, host.client().curve[1])
        dealer.connect(located.endpoint)
        dealer.send(encode(GenerateRequest(request_id="r1", prompt="Hi")))
        assert not dealer.poll(3000)

    log = host.log_text()
    assert f"refused a client whose key (fingerprint {fingerprint(intruder.public)}) is not allowed" in log
    assert intruder.public.decode() not in log and intruder.secret.decode() not in log


def test_a_peer_speaking_another_protocol_version_is_refused_clearly(fleet):
    host = fleet.hosts["b"]
    with zmq.Context.instance().socket(zmq.DEALER) as dealer:
        dealer.linger = 0
        secure_client(dealer, fleet.client_keys, host.client().curve[1])
        dealer.connect(host.endpoint)
        dealer.send(msgspec.msgpack.encode({"type": "list_models", "call_id": "v9", "protocol_version": 9}))
        assert dealer.poll(10_000)
        reply = reply_decoder().decode(dealer.recv())
    assert isinstance(reply, CallFailed) and reply.code == "protocol_mismatch"
    assert reply.message == f"the caller speaks protocol version 9, host b's supervisor speaks {PROTOCOL_VERSION}"


def test_a_session_stays_on_its_replica_and_other_requests_spread(fleet):
    for name in HOSTS:  # a replica on each host
        assert fleet.ctl("load", "chat", "--host", name).returncode == 0
    client = openai(fleet)
    session = httpx.post(f"{fleet.url}/api/v1/sessions", json={}, timeout=30).json()["id"]
    cached, prompts = [], []
    for turn in ("My name is Ana.", "What is my name?", "Thank you, Ana says goodbye."):
        reply = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": turn}], temperature=0, max_tokens=4,
            extra_body={"session_id": session},
        )  # fmt: skip
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
        prompts.append(reply.usage.prompt_tokens)
    # Each turn's prompt starts with the one before it: on the same replica, all of that came from its cache.
    assert cached[1] >= prompts[0] - 2 and cached[2] >= prompts[1] - 2, (cached, prompts)

    # Four streams at once, no session: each replica gets some (seen in flight by its own supervisor).
    busy: set[str] = set()
    done = threading.Event()
    streams = [threading.Thread(target=_stream, args=(fleet, done)) for _ in range(4)]
    for thread in streams:
        thread.start()

    def both_busy() -> bool:
        busy.update(name for name, host in fleet.hosts.items()
                    if any(m.id == "chat" and m.in_flight for m in host.models().models))  # fmt: skip
        return busy == set(HOSTS)

    try:
        assert wait_until(both_busy, timeout=120, interval=0.2), busy
    finally:
        done.set()  # the streams hang up: their generations are aborted
        for thread in streams:
            thread.join()


def _stream(fleet, done: threading.Event) -> None:
    body = {"model": "chat", "messages": STORY, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{fleet.url}/v1/chat/completions", json=body, timeout=300) as response:
        for _ in response.iter_lines():
            if done.is_set():
                return


def test_a_host_killed_mid_stream_ends_its_streams_and_its_models_move_then_it_rejoins(fleet):
    for name in HOSTS:
        assert fleet.ctl("load", "chat", "--host", name).returncode == 0
    # Two streams at once: placement gives each replica one (the fewest in flight, ties in turn). Its second key is
    # the in-flight count each supervisor last heard from its worker (refreshed once a heartbeat), so an earlier
    # test's requests must be seen finished first, or both streams can go to the replica that looks idler.
    assert wait_until(lambda: all(in_flight(fleet, name, "chat") == 0 for name in HOSTS), timeout=60)
    lines: list[list[str]] = [[], []]
    started = [threading.Event(), threading.Event()]
    stop = threading.Event()

    def read(i: int) -> None:
        body = {"model": "chat", "messages": STORY, "max_tokens": 300, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{fleet.url}/v1/chat/completions", json=body, timeout=300) as response:
            for line in response.iter_lines():
                lines[i].append(line)
                if '"content":"' in line and '"content":""' not in line:
                    started[i].set()
                if stop.is_set():
                    return

    readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for reader in readers:
        reader.start()
    try:
        assert all(event.wait(180) for event in started)
        assert wait_until(lambda: all(in_flight(fleet, name, "chat") == 1 for name in HOSTS), timeout=60), {
            name: in_flight(fleet, name, "chat") for name in HOSTS
        }  # one stream on each host, so killing b ends exactly one
        fleet.hosts["b"].kill()
        assert wait_until(lambda: any('"error"' in line for stream in lines for line in stream), timeout=30)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    errors = [line for stream in lines for line in stream if '"error"' in line]
    assert len(errors) == 1, errors  # b's stream ended; a's went on until we stopped reading
    # Ended by the closed connection itself, not after a heartbeat timeout or the gateway's silence timeout.
    assert '"code":"worker_unavailable"' in errors[0] and "host b is down: its connection closed" in errors[0]

    ready = httpx.get(f"{fleet.url}/api/v1/health/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert ready.json()["hosts"]["b"]["ok"] is False
    client = openai(fleet)
    reply = client.chat.completions.create(model="chat", messages=PARIS, temperature=0, max_tokens=8)
    assert "Paris" in reply.choices[0].message.content  # served by a
    refused = httpx.post(f"{fleet.url}/v1/embeddings", json={"model": "minilm", "input": "hi"}, timeout=60)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "worker_unavailable"
    assert "minilm runs on b" in refused.json()["error"]["message"]

    fleet.hosts["b"].start()
    assert wait_until(lambda: fleet.hosts_up() == set(HOSTS), timeout=30)
    vectors = client.embeddings.create(model="minilm", input=["Back again."])  # only b can serve it
    assert len(vectors.data[0].embedding) == 384 and states(fleet, "minilm") == {"b": "ready"}


def test_a_restarted_gateway_finds_the_fleet_as_it_was(fleet):
    before = {name: {m.id: (m.state, m.pid) for m in host.models().models} for name, host in fleet.hosts.items()}
    fleet.gateway.stop()
    fleet.start_gateway()
    listed = {m["id"]: m["hosts"] for m in httpx.get(f"{fleet.url}/v1/models", timeout=30).json()["data"]}
    for model, hosts in listed.items():
        assert hosts == {name: seen[model][0] for name, seen in before.items() if model in seen}
    ready_model = next(m for m, hosts in listed.items() if "ready" in hosts.values() and m != "minilm")
    reply = openai(fleet).chat.completions.create(model=ready_model, messages=PARIS, temperature=0, max_tokens=4)
    assert reply.usage.completion_tokens >= 1
    after = {name: {m.id: (m.state, m.pid) for m in host.models().models} for name, host in fleet.hosts.items()}
    assert after == before  # nothing was loaded again, nothing stopped
