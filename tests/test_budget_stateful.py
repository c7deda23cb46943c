"""A randomized sequence of requests and ctl commands against three models and a budget that fits two
(hypothesis stateful testing): the budget is never exceeded, no request that could wait fails, and every
worker process belongs to a model the supervisor knows is loaded. The same across the two hosts of a fleet,
with workers and whole hosts killed on the way."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.conftest import BUDGET_GB, FLEET_BUDGET_GB
from tests.harness import wait_until
from tests.test_memory_budget import BRIEF, chat, models, reset, resident_gb

GB = 1024**3
MODELS = st.sampled_from(["a", "b", "c"])


class Sampler(threading.Thread):
    """Watches what the worker processes of a server (or a fleet's host) hold, every 50 ms, for the whole run:
    transient peaks count too."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.peak, self.stopped = server, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, resident_gb(self.server))


def test_random_requests_and_commands_keep_within_the_budget(budget_server):
    reset(budget_server)
    sampler = Sampler(budget_server)
    sampler.start()

    class BudgetMachine(RuleBasedStateMachine):
        @rule(wanted=st.lists(MODELS, min_size=1, max_size=3))
        def concurrent_requests(self, wanted):
            with ThreadPoolExecutor(len(wanted)) as pool:
                replies = list(pool.map(lambda model: chat(budget_server, model), wanted))
            for model, reply in zip(wanted, replies, strict=True):
                assert reply.status_code == 200, (model, reply.text)
                assert reply.json()["model"] == model

        @rule(model=MODELS)
        def load(self, model):
            result = budget_server.ctl("load", model)
            assert result.returncode == 0, result.stderr

        @rule(model=MODELS)
        def unload(self, model):
            result = budget_server.ctl("unload", model)
            assert result.returncode == 0, result.stderr

        @rule(model=st.none() | MODELS)
        def pin_only(self, model):
            """At most one model pinned, so the other two can always make room for each other."""
            for other in "abc":
                assert budget_server.ctl("pin" if other == model else "unpin", other).returncode == 0

        @invariant()
        def within_budget_and_no_stray_workers(self):
            state = models(budget_server)
            memory = state.pop("")
            assert memory.used_bytes <= memory.budget_bytes
            assert resident_gb(budget_server) <= BUDGET_GB
            known = {m.pid for m in state.values() if m.pid is not None}
            assert set(budget_server.worker_pids()) <= known

    BudgetMachine.TestCase.settings = settings(
        max_examples=4,
        stateful_step_count=6,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        BudgetMachine.TestCase().runTest()
    finally:
        sampler.stopped.set()
        sampler.join()
        reset(budget_server)
    assert 0 < sampler.peak <= BUDGET_GB


FLEET_MODELS = st.sampled_from(["chat", "spare", "minilm"])  # minilm runs on host b only
HOSTS = st.sampled_from(["a", "b"])


def test_loads_unloads_crashes_and_host_failures_keep_every_host_within_its_budget(fleet):
    """The same across the two hosts of a fleet, each deciding its own memory: requests placed by the gateway,
    ctl loads and unloads on either host, workers killed, whole hosts killed and restarted."""
    samplers = {name: Sampler(host) for name, host in fleet.hosts.items()}
    for sampler in samplers.values():
        sampler.start()

    class FleetMachine(RuleBasedStateMachine):
        @rule(model=FLEET_MODELS)
        def request(self, model):
            if model == "minilm":
                reply = httpx.post(f"{fleet.url}/v1/embeddings", json={"model": model, "input": "hi"}, timeout=300)
            else:
                body = {"model": model, "messages": BRIEF, "max_tokens": 2, "temperature": 0}
                reply = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, timeout=300)
            assert reply.status_code == 200, (model, reply.text)

        @rule(model=FLEET_MODELS, host=HOSTS)
        def load_or_unload(self, model, host):
            for command in ("load", "unload"):
                result = fleet.ctl(command, model, "--host", host)
                if model == "minilm" and host == "a":
                    assert result.returncode == 1 and "does not run on host a" in result.stderr
                else:
                    assert result.returncode == 0, result.stderr
                if command == "load":
                    break  # half the time the load stays

        @rule(model=FLEET_MODELS, host=HOSTS)
        def crash_a_worker(self, model, host):
            fleet.hosts[host].signal_worker(model, signal.SIGKILL)  # if it runs there

        @rule(host=HOSTS)
        def kill_and_restart_the_host(self, host):
            fleet.hosts[host].kill()
            fleet.hosts[host].start()
            assert wait_until(lambda: fleet.hosts_up() == {"a", "b"}, timeout=30)

        @invariant()
        def every_host_within_its_budget_and_no_stray_workers(self):
            for host in fleet.hosts.values():
                reply = host.models()
                assert reply.memory.used_bytes <= reply.memory.budget_bytes
                assert resident_gb(host) <= FLEET_BUDGET_GB
                assert set(host.worker_pids()) <= {m.pid for m in reply.models if m.pid is not None}

    FleetMachine.TestCase.settings = settings(
        max_examples=3,
        stateful_step_count=5,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        FleetMachine.TestCase().runTest()
    finally:
        for sampler in samplers.values():
            sampler.stopped.set()
            sampler.join()
    assert all(sampler.peak <= FLEET_BUDGET_GB for sampler in samplers.values())
