"""A randomized sequence of requests and ctl commands against three models and a budget that fits two
(hypothesis stateful testing): the budget is never exceeded, no request that could wait fails, and every
worker process belongs to a model the supervisor knows is loaded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.conftest import BUDGET_GB
from tests.test_memory_budget import chat, models, reset, resident_gb

GB = 1024**3
MODELS = st.sampled_from(["a", "b", "c"])


class Sampler(threading.Thread):
    """Watches what the worker processes hold, every 50 ms, for the whole run: transient peaks count too."""

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
