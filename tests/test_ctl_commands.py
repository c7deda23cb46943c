"""Each ctl command at both ends: against a fake supervisor client, what an operator reads; against a fleet
without workers (or a fake one), what the supervisor answers."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time

import pytest

from protocol import ErrorCode
from protocol.ctl import (
    CALLS,
    BudgetInfo,
    EnsureLoaded,
    ListModels,
    Load,
    Located,
    ModelInfo,
    ModelList,
    Pin,
    Pinned,
    Status,
    StatusReport,
    Unload,
    Unloaded,
)
from supervisor.cli import build_parser
from supervisor.config import load_config
from supervisor.ctl import COMMANDS, HANDLERS
from supervisor.fleet import Fleet, FleetError
from supervisor.orphans import WorkerRegistry

GB = 1024**3


class FakeClient:
    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def call(self, make_call, timeout=None):
        self.calls.append(make_call(call_id="c1"))
        return self.reply


def model(**overrides):
    fields = dict(
        id="qwen3-14b", aliases=[], type="llm", source="s", state="ready", context_length=32768,
        memory_estimate_bytes=15 * GB, memory_bytes=int(14.5 * GB), charged_bytes=15 * GB, pid=4242,
        uptime_seconds=3725, idle_seconds=0, in_flight=3, compute="metal",
    )  # fmt: skip
    return ModelInfo(**(fields | overrides))


def run(name, reply, *argv):
    client, out = FakeClient(reply), io.StringIO()
    args = build_parser().parse_args(["ctl", name, *argv])
    code = COMMANDS[name].run(client, args, out)
    return code, out.getvalue(), client.calls


BUDGET = BudgetInfo(budget_bytes=400 * GB, used_bytes=15 * GB, reserved_bytes=0)


def report(*models):
    return StatusReport(
        call_id="c1", pid=1, protocol_version=1, uptime_seconds=60, memory_budget_bytes=400 * GB,
        models=list(models), memory=BUDGET,
    )  # fmt: skip


def test_ps_is_a_table_of_every_model():
    code, out, _ = run(
        "ps",
        report(
            model(),
            model(
                id="phi-3",
                state="stopped",
                pid=None,
                memory_bytes=0,
                charged_bytes=0,
                uptime_seconds=None,
                idle_seconds=None,
                compute="",
            ),
        ),
    )
    assert code == 0
    budget, header, ready, stopped = out.splitlines()
    assert budget == "memory budget 400.00 GB: 15.00 GB used, 385.00 GB free"
    assert header.split() == ["MODEL", "STATE", "PID", "CHARGED", "RESIDENT", "UPTIME", "IDLE", "IN-FLIGHT", "COMPUTE"]
    assert ready.split() == ["qwen3-14b", "ready", "4242", "15.00", "GB", "14.50", "GB", "1h02m", "0m00s", "3", "metal"]
    assert stopped.split() == ["phi-3", "stopped", "-", "-", "-", "-", "-", "-", "-"]


def test_memory_shows_the_budget_and_each_models_share():
    reserved = BudgetInfo(budget_bytes=40 * GB, used_bytes=15 * GB, reserved_bytes=20 * GB)
    pinned = model(id="phi-3", state="starting", pid=None, memory_bytes=0, charged_bytes=20 * GB, pinned=True)
    code, out, _ = run("memory", ModelList(call_id="c1", models=[model(), pinned], memory=reserved))
    assert code == 0
    budget, header, _, second = out.splitlines()
    assert budget == "memory budget 40.00 GB: 15.00 GB used, 20.00 GB reserved, 5.00 GB free"
    assert header.split() == ["MODEL", "STATE", "CHARGED", "RESIDENT", "ESTIMATE", "PINNED", "PRIORITY"]
    assert second.split() == ["phi-3", "starting", "20.00", "GB", "-", "15.00", "GB", "yes", "0"]


def test_pin_and_unpin_send_the_flag():
    code, out, calls = run("pin", Pinned(call_id="c1", model_id="qwen3-14b", pinned=True), "qwen3")
    assert code == 0 and out.strip() == "qwen3-14b pinned" and calls[0].pinned is True
    code, out, calls = run("unpin", Pinned(call_id="c1", model_id="qwen3-14b", pinned=False), "qwen3")
    assert code == 0 and out.strip() == "qwen3-14b unpinned" and calls[0].pinned is False


def test_status_exits_1_when_a_worker_misses_its_ping():
    code, out, _ = run("status", report(model(alive=True, ping_ms=0.8)))
    assert code == 0 and "pong in 0.8 ms" in out and "memory budget 400.00 GB: 15.00 GB used" in out
    code, out, _ = run("status", report(model(alive=False)))
    assert code == 1 and "NO PONG" in out


def test_load_and_unload_name_what_they_did():
    code, out, calls = run(
        "load", Located(call_id="c1", model_id="qwen3-14b", endpoint="ipc://w", instance_id="i"), "qwen3"
    )
    assert code == 0 and "qwen3-14b ready" in out and calls[0].model == "qwen3"
    evicting = Located(call_id="c1", model_id="qwen3-14b", endpoint="ipc://w", instance_id="i", evicted=["a", "b"])
    code, out, _ = run("load", evicting, "qwen3")
    assert out.splitlines()[:2] == ["evicted a to make room", "evicted b to make room"]
    code, out, _ = run("unload", Unloaded(call_id="c1", model_id="qwen3-14b", pid=4242), "qwen3")
    assert "pid 4242 stopped" in out
    code, out, _ = run("unload", Unloaded(call_id="c1", model_id="qwen3-14b", pid=None), "qwen3")
    assert "was not loaded" in out


def test_every_command_has_help_from_its_docstring():
    for name, module in COMMANDS.items():
        assert module.__doc__ and module.__doc__.strip(), name
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser)


# -- the supervisor's side: each call's handler, against a fleet with no workers --------------------------


class FakeSupervisor:
    def __init__(self, fleet, host_name: str = ""):
        self.fleet, self.started, self.host_name = fleet, time.monotonic(), host_name


class Spawned:
    """What a handler reads of a worker the fleet handed out."""

    model_id, endpoint, instance_id = "a", "ipc://w", "i1"


class LoadingFleet:
    """Records how a handler asked for a model to be served."""

    def __init__(self):
        self.asked = []

    async def ensure_loaded(self, name, **how):
        self.asked.append((name, how))
        return Spawned(), ["b"]


@pytest.fixture
def idle(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text(
        "memory_budget_gb: 8\nmodels:\n  - {id: a, aliases: [first], source: x}\n  - {id: b, source: y}\n"
    )
    fleet = Fleet(load_config(config), str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path))
    return FakeSupervisor(fleet)


def answer(supervisor, call):
    return asyncio.run(HANDLERS[type(call)](supervisor, call))


def test_every_call_the_supervisor_decodes_has_a_handler():
    assert set(HANDLERS) == set(CALLS)


def test_handlers_answer_from_the_fleet(idle):
    assert answer(idle, Pin(call_id="c", model="first")) == Pinned(call_id="c", model_id="a", pinned=True)
    assert idle.fleet.slots["a"].pinned
    listed = answer(idle, ListModels(call_id="c", allowed=["b"]))
    assert [m.id for m in listed.models] == ["b"] and listed.memory.budget_bytes == 8 * GB
    assert answer(idle, Unload(call_id="c", model="first")) == Unloaded(call_id="c", model_id="a", pid=None)
    report = answer(idle, Status(call_id="c"))
    assert report.pid == os.getpid() and report.memory_budget_bytes == 8 * GB
    assert [(m.id, m.state, m.alive) for m in report.models] == [("a", "stopped", None), ("b", "stopped", None)]
    with pytest.raises(FleetError) as refused:
        answer(idle, Pin(call_id="c", model="nope"))
    assert refused.value.code == ErrorCode.MODEL_NOT_FOUND


def test_load_and_ensure_loaded_say_where_the_model_is():
    supervisor = FakeSupervisor(LoadingFleet())
    located = answer(supervisor, Load(call_id="c", model="first"))
    assert located == Located(call_id="c", model_id="a", endpoint="ipc://w", instance_id="i1", evicted=["b"])
    answer(supervisor, EnsureLoaded(call_id="d", model="first", stale_instance="i0", allowed=["a"]))
    assert supervisor.fleet.asked == [
        ("first", {"retry_failed": True}),
        ("first", {"stale_instance": "i0", "allowed": ["a"]}),
    ]
