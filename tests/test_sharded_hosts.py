"""One model sharded over two hosts of a fleet (`shard: {ranks: 2, hosts: [a, b]}`): two supervisors on this
machine (tests/fleet_harness.py), rank 0 on a (the worker the gateway talks to), rank 1 started and charged by b's
supervisor. It answers as the same model in one process does, token for token; a rank killed on b takes every
rank down and the next request starts them again; unload frees both hosts; b stops its rank by itself when the
lease is not renewed. The model is the tiny random-weight Llama of test_sharded.py."""

from __future__ import annotations

import socket

import openai
import psutil
import pytest
import zmq
from openai import OpenAI

from protocol.ctl import ModelInfo, Status, StatusReport
from protocol.ranks import LEASE_SECONDS, RankLease, RanksHeld, RanksReserved, ReserveRanks, StartRanks, StopRanks
from supervisor.config import load_config
from supervisor.ctl_client import CtlError
from tests.conftest import MODEL, TEST_SECRETS
from tests.fleet_harness import Fleet, FleetHost
from tests.harness import gone, killed_mid_stream, wait_until, write_config
from tests.tiny_llama import build_tiny_llama

PROMPTS = ["Hello", "Tell me about the sea."]
SPREAD = {"id": "spread", "source": "spread-llama", "shard": {"ranks": 2, "hosts": ["a", "b"]}}
# 8 GB a host: room on a (12 GB), more than b's whole budget (4 GB).
HUGE = {"id": "huge", "source": "spread-llama", "memory_gb": 16, "shard": {"ranks": 2, "hosts": ["a", "b"]}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, model_store):
    # An untied head: random weights tied to the embedding mostly repeat the prompt's last token.
    build_tiny_llama(model_store / "spread-llama", model_store / MODEL, tie_word_embeddings=False)
    fleet = Fleet(
        tmp_path_factory.mktemp("sharded-hosts"),
        model_store,
        [{"id": "whole", "source": "spread-llama", "memory_gb": 0.3, "hosts": ["a"]}, SPREAD, HUGE],
        host_settings={"a": {"memory_budget_gb": 12}},
        memory_budget_gb=4,
        heartbeat_seconds=0.5,
        crash_limit=100,
    )
    TEST_SECRETS.extend(fleet.secrets())
    yield fleet.start()
    fleet.stop()


@pytest.fixture(scope="module")
def client(fleet):
    return OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0, timeout=180)


def ask(client: OpenAI, model: str, prompt: str):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0, logprobs=True
    )
    return reply.choices[0]


def status(host: FleetHost) -> StatusReport:
    return host.client().call(lambda call_id: Status(call_id=call_id))


def row(host: FleetHost, model: str = "spread") -> ModelInfo | None:
    """The model's row in the host's `ctl ps`: its own model's, or the ranks it runs for another host's."""
    report = status(host)
    return next((m for m in [*report.models, *report.guest_ranks] if m.id == model), None)


def rank_processes(fleet) -> list[psutil.Process]:
    """Every rank of `spread`, as a's supervisor lists them (rank 1's pid is b's)."""
    return [psutil.Process(r.pid) for r in row(fleet.hosts["a"]).ranks]


def b_is_clear(fleet) -> bool:
    """b runs no rank and charges nothing."""
    report = status(fleet.hosts["b"])
    return row(fleet.hosts["b"]) is None and report.memory.used_bytes == report.memory.reserved_bytes == 0


def test_spread_over_two_hosts_it_answers_as_the_whole_model_and_each_host_charges_its_rank(fleet, client):
    for prompt in PROMPTS:
        whole, spread = ask(client, "whole", prompt), ask(client, "spread", prompt)
        assert [t.token for t in spread.logprobs.content] == [t.token for t in whole.logprobs.content]
        assert spread.message.content == whole.message.content
    a, b = fleet.hosts["a"], fleet.hosts["b"]
    owner, guest = row(a), row(b)
    assert [(r.rank, r.host) for r in owner.ranks] == [(0, ""), (1, "b")]
    assert owner.ranks[1].pid == guest.ranks[0].pid and guest.ranks[0].pid in b.worker_pids()
    assert owner.ranks[0].pid in a.worker_pids() and all(r.memory_bytes > 0 for r in owner.ranks)
    # Each host charges its rank's share: half the model's estimate on each.
    assert guest.ranks_for == "a" and guest.charged_bytes == owner.charged_bytes > 0
    assert [m.id for m in status(b).models] == []  # not b's model: nothing a gateway would place or ping there
    assert status(b).memory.used_bytes == guest.charged_bytes
    ps = fleet.ctl("ps", "--host", "a")
    assert ps.returncode == 0, ps.stderr
    [line] = [line for line in ps.stdout.splitlines() if line.startswith("spread")]
    assert "r0@here" in line and "r1@b" in line and f"{owner.ranks[0].pid},{owner.ranks[1].pid}@b" in line
    ps_b = fleet.ctl("ps", "--host", "b")
    assert "ranks for host a" in ps_b.stdout, ps_b.stdout
    memory_b = fleet.ctl("memory", "--host", "b")
    assert any(line.split()[:5] == ["spread", "ranks", "for", "host", "a"] for line in memory_b.stdout.splitlines())
    status_b = fleet.ctl("status", "--host", "b")
    assert status_b.returncode == 0 and f"spread: ranks 1 for host a, pids {guest.ranks[0].pid}" in status_b.stdout


def test_killing_the_rank_on_b_mid_stream_stops_every_rank_on_both_hosts(fleet, client):
    ask(client, "spread", PROMPTS[0])
    before = rank_processes(fleet)
    crashes = row(fleet.hosts["a"]).crashes
    error = killed_mid_stream(client, "spread", PROMPTS[1], before[1])
    assert error is not None and error.code == "worker_crashed"
    assert wait_until(lambda: all(gone(p) for p in before), timeout=30), "a rank outlived the one killed"
    assert wait_until(lambda: b_is_clear(fleet), timeout=30), status(fleet.hosts["b"])
    assert wait_until(lambda: row(fleet.hosts["a"]).crashes > crashes, timeout=30)
    info = row(fleet.hosts["a"])
    assert info.crashes == crashes + 1  # once, not once per rank
    assert f"rank 1 (pid {before[1].pid} on host b) killed by SIGKILL" in info.last_error
    assert ask(client, "spread", PROMPTS[0]).message.content
    assert [r.host for r in row(fleet.hosts["a"]).ranks] == ["", "b"]


def test_unload_stops_every_rank_and_frees_both_hosts(fleet, client):
    ask(client, "spread", PROMPTS[0])
    processes = rank_processes(fleet)
    result = fleet.ctl("unload", "spread", "--host", "a")
    assert result.returncode == 0, result.stderr
    assert all(gone(p) for p in processes)  # both, when unload returns
    assert b_is_clear(fleet)
    info = row(fleet.hosts["a"])
    assert info.state == "stopped" and info.ranks == [] and info.charged_bytes == 0


def test_a_host_without_room_for_its_ranks_refuses_the_load_and_nothing_of_it_is_left(fleet, client):
    a = fleet.hosts["a"]
    before = set(a.worker_pids())
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "huge", PROMPTS[0])
    assert caught.value.status_code == 507
    assert "host b: ranks [1] of huge need 8.00 GB, more than its whole 4.00 GB budget" in caught.value.message
    info = row(a, "huge")
    assert info.state == "stopped" and info.charged_bytes == 0 and "host b" in info.last_error
    assert wait_until(lambda: set(a.worker_pids()) <= before, timeout=30)  # rank 0 spawned on a is gone
    assert b_is_clear(fleet)


def test_b_answers_the_rank_calls_and_stops_its_ranks_when_the_lease_is_not_renewed(fleet):
    b = fleet.hosts["b"].client()
    with pytest.raises(CtlError, match=r"runs ranks \[1\] of spread, not \[0\]"):
        b.call(lambda call_id: ReserveRanks(call_id=call_id, model="spread", ranks=[0]))
    with pytest.raises(CtlError, match="runs no ranks of 'whole'"):
        b.call(lambda call_id: ReserveRanks(call_id=call_id, model="whole", ranks=[1]))
    reserved = b.call(lambda call_id: ReserveRanks(call_id=call_id, model="spread", ranks=[1]))
    assert isinstance(reserved, RanksReserved) and reserved.addresses[0].startswith("127.0.0.1:")
    # Rank 0's address: a socket that listens and never speaks, so rank 1 waits in its ring's set-up.
    with socket.create_server(("127.0.0.1", 0)) as rank_0:
        ring = [[f"127.0.0.1:{rank_0.getsockname()[1]}"], reserved.addresses]

        def start(lease: str) -> RanksHeld:
            held = b.call(lambda call_id: StartRanks(call_id=call_id, model="spread", owner="a", lease=lease,
                                                     ranks=[1], ring_hosts=ring))  # fmt: skip
            assert [r.rank for r in held.ranks] == [1] and held.ranks[0].ended is None
            assert row(fleet.hosts["b"]).charged_bytes > 0
            return held

        held = start("lease-1")
        renewed = b.call(lambda call_id: RankLease(call_id=call_id, model="spread", lease="lease-1"))
        assert renewed.known and renewed.ranks[0].pid == held.ranks[0].pid
        stopped = b.call(lambda call_id: StopRanks(call_id=call_id, model="spread", lease="lease-1"))
        assert stopped.ranks[0].ended and not psutil.pid_exists(held.ranks[0].pid)
        assert b_is_clear(fleet)
        unknown = b.call(lambda call_id: RankLease(call_id=call_id, model="spread", lease="lease-1"))
        assert not unknown.known

        held = start("lease-2")  # and never renewed
        process = psutil.Process(held.ranks[0].pid)
        assert wait_until(lambda: gone(process), timeout=LEASE_SECONDS + 30)
        assert wait_until(lambda: b_is_clear(fleet), timeout=10)
    log = fleet.hosts["b"].log_text()
    assert f"has not renewed the lease of ranks [1] (pids [{process.pid}])" in log


def test_with_the_owner_supervisor_killed_b_stops_its_rank_by_itself(fleet, client):
    ask(client, "spread", PROMPTS[0])
    rank_1 = rank_processes(fleet)[1]
    fleet.hosts["a"].kill()
    assert wait_until(lambda: gone(rank_1), timeout=LEASE_SECONDS + 30)
    assert wait_until(lambda: b_is_clear(fleet), timeout=LEASE_SECONDS + 10)


def fleet_config(tmp_path, store, shard: dict, with_hosts: bool = True, **model):
    hosts = [
        {"name": name, "endpoint": f"tcp://127.0.0.1:{port}", "public_key": zmq.curve_keypair()[0].decode()}
        for name, port in (("a", 7301), ("b", 7302))
    ]
    spec = {"id": "m", "source": "not-on-disk", "memory_gb": 1, "shard": shard, **model}
    return write_config(tmp_path / "models.yaml", store, [spec], **({"hosts": hosts} if with_hosts else {}))


@pytest.mark.parametrize(
    ("shard", "settings", "message"),
    [
        ({"ranks": 2, "hosts": ["a", "c"]}, {}, r"shard.hosts \['c'\] are not in the config's hosts \(a, b\)"),
        ({"ranks": 3, "hosts": ["a", "b"]}, {}, "shard.ranks is 3, which the 2 shard.hosts cannot share evenly"),
        ({"ranks": 2, "hosts": ["a", "b"]}, {"with_hosts": False}, "the config lists no hosts"),
        ({"ranks": 2, "hosts": ["a", "b"]}, {"hosts": ["b"]}, "served from rank 0's host, shard.hosts\\[0\\] \\(a\\)"),
        ({"ranks": 2, "hosts": ["a", "a"]}, {}, "a host is listed twice"),
    ],
)
def test_a_shard_over_hosts_that_cannot_work_is_refused_with_the_reason(
    tmp_path, model_store, shard, settings, message
):
    with pytest.raises(ValueError, match=message):
        load_config(fleet_config(tmp_path, model_store, shard, **settings))


def test_the_model_is_served_from_rank_0s_host_only(tmp_path, model_store):
    path = fleet_config(tmp_path, model_store, {"ranks": 4, "hosts": ["a", "b"]})
    a, b = load_config(path, "a"), load_config(path, "b")
    spec = a.models["m"]
    assert a.runs_here(spec) and not b.runs_here(spec) and a.served_on(spec) == ["a"]
    assert spec.shard.rank_hosts() == ["a", "a", "b", "b"]
