"""The supervisor's bookkeeping without processes: the lifecycle's transition table, and the memory budget's
charges, plans and report."""

from __future__ import annotations

import logging
from itertools import product

import pytest

from protocol.control import MemoryReport
from protocol.ctl import ModelState as State
from supervisor.config import GB, ModelSpec
from supervisor.memory_budget import MemoryBudget
from supervisor.model_slot import LEASE_SECONDS, TRANSITIONS, IllegalTransition, ModelSlot


def slot(model_id: str = "m", budget: MemoryBudget | None = None, **spec) -> ModelSlot:
    budget = budget or MemoryBudget(10 * GB)
    return ModelSlot(ModelSpec(id=model_id, source="x", **spec), "x", budget.open(model_id))


def path_to(state: State) -> list[State]:
    """The shortest run of allowed moves from stopped to `state`."""
    paths = {State.STOPPED: []}
    while state not in paths:
        for (a, b), _ in TRANSITIONS.items():
            if a in paths and b not in paths:
                paths[b] = [*paths[a], b]
    return paths[state]


def test_the_table_is_the_lifecycle_the_fleet_runs():
    assert set(TRANSITIONS) == {
        (State.STOPPED, State.STARTING),
        (State.FAILED, State.STARTING),
        (State.STARTING, State.READY),
        (State.STARTING, State.STOPPED),
        (State.STARTING, State.FAILED),
        (State.READY, State.STOPPING),
        (State.READY, State.STOPPED),
        (State.READY, State.FAILED),
        (State.STOPPING, State.STOPPED),
    }


@pytest.mark.parametrize(("current", "to"), [e for e in product(State, State) if e not in TRANSITIONS])
def test_every_transition_not_in_the_table_raises_and_changes_nothing(current, to):
    model = slot()
    for state in path_to(current):
        model.move(state, "test")
    counted = dict(model.transitions)
    with pytest.raises(IllegalTransition, match=f"no transition from {current} to {to}"):
        model.move(to, "test")
    assert model.state is current and dict(model.transitions) == counted


def test_each_transition_is_logged_with_its_reason_and_counted(caplog):
    model = slot("qwen")
    with caplog.at_level(logging.INFO, logger="supervisor.fleet"):
        for state in (State.STARTING, State.READY, State.STOPPED, State.STARTING, State.READY, State.STOPPING):
            model.move(state, f"because {state}")
    assert "qwen because ready (starting -> ready)" in caplog.messages
    assert model.state is State.STOPPING
    assert model.transitions[State.STARTING, State.READY] == 2 and model.loads == 2
    assert model.crash_count == 1  # ready -> stopped is a crash
    assert model.info().transitions == {
        "stopped->starting": 2, "starting->ready": 2, "ready->stopped": 1, "ready->stopping": 1
    }  # fmt: skip


class FakeWorker:
    """What the budget and the slot read of a worker process."""

    def __init__(self, resident: int = 0, in_flight: int = 0, pong_at: float = 0.0):
        self.memory = MemoryReport(mlx_active_bytes=0, mlx_peak_bytes=0, mlx_cache_bytes=0, rss_bytes=resident)
        self.in_flight, self.pong_at = in_flight, pong_at


def loaded(model: ModelSlot, budget: MemoryBudget, worker: FakeWorker, last_used: float = 0.0) -> ModelSlot:
    """`model` ready on `worker`, as the fleet leaves it after a load."""
    for state in (State.STARTING, State.READY):
        model.move(state, "test")
    budget.grant(model.charge)
    budget.attach(model.charge, worker)
    model.worker, model.last_used = worker, last_used
    return model


def test_a_charge_is_reserved_then_used_then_the_larger_of_estimate_and_report_then_released():
    budget = MemoryBudget(4 * GB)
    model = slot("a", budget)
    model.charge.estimate = 1 * GB
    assert budget.report().used_bytes == 0 and model.charge.bytes == 0  # waiting for room counts nothing
    budget.grant(model.charge)
    assert (budget.report().reserved_bytes, budget.report().used_bytes) == (1 * GB, 0)
    worker = FakeWorker(resident=GB // 2)
    budget.attach(model.charge, worker)
    assert (budget.report().reserved_bytes, budget.report().used_bytes) == (0, 1 * GB)
    worker.memory = FakeWorker(resident=3 * GB).memory  # grown past its estimate: that counts
    assert budget.report().used_bytes == 3 * GB and budget.report().free_bytes == 1 * GB
    budget.release(model.charge)
    assert budget.report().used_bytes == 0 and model.charge.bytes == 0
    with pytest.raises(ValueError, match="already exists"):
        budget.open("a")


def test_the_plan_evicts_idle_unpinned_models_lowest_priority_then_least_recent():
    budget = MemoryBudget(4 * GB)
    idle = LEASE_SECONDS + 1  # a pong this long after the last hand-out: nothing in flight
    old = loaded(slot("old", budget), budget, FakeWorker(GB, pong_at=idle), last_used=0.0)
    recent = loaded(slot("recent", budget), budget, FakeWorker(GB, pong_at=idle + 5), last_used=5.0)
    precious = loaded(slot("precious", budget, priority=5), budget, FakeWorker(GB, pong_at=idle), last_used=0.0)
    busy = loaded(slot("busy", budget), budget, FakeWorker(GB // 2, in_flight=1, pong_at=idle))
    for model in (old, recent, precious, busy):
        model.charge.estimate = GB // 2 if model is busy else GB
    new = slot("new", budget)
    others = [old, recent, precious, busy]
    new.charge.estimate = GB // 2
    assert budget.plan(new.charge, others) == []  # 3.5 GB used of 4
    new.charge.estimate = 2 * GB
    assert budget.plan(new.charge, others) == [old, recent]
    precious.pinned = recent.pinned = True
    assert budget.plan(new.charge, others) is None  # only old may go: the caller waits for busy or pinned ones
    new.charge.estimate = 5 * GB
    assert budget.exceeds(new.charge)
