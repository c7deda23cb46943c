"""Each ctl command at both ends: against a fake supervisor client, what an operator reads; against a fleet
without workers (or a fake one), what the supervisor answers."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time

import msgspec
import pytest

from protocol import ErrorCode
from protocol.ctl import (
    CALLS,
    AddAlias,
    AliasEntry,
    AliasTable,
    BudgetInfo,
    EnsureLoaded,
    ListModels,
    Load,
    Located,
    ModelInfo,
    ModelList,
    Pin,
    Pinned,
    RankInfo,
    RemoveAlias,
    Status,
    StatusReport,
    Unload,
    Unloaded,
)
from protocol.generation import SamplingDefaults
from protocol.store import FileProgress, PullProgress, Pulls, RemoveStored, StoredModel, StoreList
from supervisor.cli import build_parser
from supervisor.config import load_config
from supervisor.ctl import COMMANDS, HANDLERS
from supervisor.fleet import Fleet, FleetError
from supervisor.model_names import NameRefused
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
            model(aliases=["qwen3", "gpt-*"]),
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
    headers = ["MODEL", "STATE", "PID", "CHARGED", "RESIDENT", "UPTIME", "IDLE", "IN-FLIGHT", "COMPUTE", "ALIASES"]
    assert header.split() == headers
    assert ready.split() == [
        "qwen3-14b", "ready", "4242", "15.00", "GB", "14.50", "GB", "1h02m", "0m00s", "3", "metal", "qwen3,", "gpt-*"
    ]  # fmt: skip
    assert stopped.split() == ["phi-3", "stopped", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "\x1b" not in out  # not a terminal: no escape codes


def test_memory_shows_the_budget_and_each_models_share():
    reserved = BudgetInfo(budget_bytes=40 * GB, used_bytes=15 * GB, reserved_bytes=20 * GB)
    pinned = model(id="phi-3", state="starting", pid=None, memory_bytes=0, charged_bytes=20 * GB, pinned=True)
    code, out, _ = run("memory", ModelList(call_id="c1", models=[model(), pinned], memory=reserved))
    assert code == 0
    budget, header, _, second = out.splitlines()
    assert budget == "memory budget 40.00 GB: 15.00 GB used, 20.00 GB reserved, 5.00 GB free"
    assert header.split() == ["MODEL", "STATE", "CHARGED", "RESIDENT", "ESTIMATE", "PINNED", "PRIORITY"]
    assert second.split() == ["phi-3", "starting", "20.00", "GB", "-", "15.00", "GB", "yes", "0"]


def test_ps_and_memory_show_the_ranks_a_host_runs_for_another_hosts_model():
    guest = model(id="deepseek", charged_bytes=200 * GB, memory_bytes=190 * GB, memory_estimate_bytes=200 * GB,
                  pid=5151, compute="ranks for host m3", shard_mode="tensor", ranks_for="m3", aliases=[],
                  ranks=[RankInfo(rank=1, pid=5151, host="m3-2", memory_bytes=190 * GB)])  # fmt: skip
    code, out, _ = run("ps", msgspec.structs.replace(report(), guest_ranks=[guest]))
    [row] = [line for line in out.splitlines() if line.startswith("deepseek")]
    assert code == 0 and "5151@m3-2" in row and "ranks for host m3" in row and "r1@m3-2 190.00 GB" in row
    code, out, _ = run("memory", ModelList(call_id="c1", models=[], memory=BUDGET, guest_ranks=[guest]))
    assert code == 0 and out.splitlines()[-1].split()[:6] == ["deepseek", "ranks", "for", "host", "m3", "200.00"]
    code, out, _ = run("status", msgspec.structs.replace(report(), guest_ranks=[guest]))
    assert "deepseek: ranks 1 for host m3, pids 5151" in out


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
        self.guests = None  # no other host's ranks: not a fleet's host


class Spawned:
    """What a handler reads of a worker the fleet handed out."""

    model_id, endpoint, instance_id, vocab_size = "a", "ipc://w", "i1", 49_152


class LoadingFleet:
    """Records how a handler asked for a model to be served."""

    def __init__(self, config):
        self.config, self.asked = config, []
        self.faulted = {"i0": None}  # instances whose crash a request may have caused

    async def ensure_loaded(self, name, **how):
        self.asked.append((name, how))
        return Spawned(), ["b"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "memory_budget_gb: 8\nmodel_store: store\n"
        "defaults: {temperature: 0.5, max_tokens: 100}\npresets: {brief: {max_tokens: 3}}\n"
        "models:\n  - {id: a, aliases: [first], source: x, defaults: {top_k: 20, max_tokens: 50}}\n"
        "  - {id: b, source: y}\n"
    )
    return load_config(path)


@pytest.fixture
def idle(config, tmp_path):
    return FakeSupervisor(Fleet(config, str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path)))


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


def test_load_and_ensure_loaded_say_where_the_model_is(config):
    supervisor = FakeSupervisor(LoadingFleet(config))
    located = answer(supervisor, Load(call_id="c", model="first"))
    assert located == Located(
        call_id="c", model_id="a", endpoint="ipc://w", instance_id="i1", evicted=["b"], vocab_size=49_152
    )
    assert not located.stale_faulted
    located = answer(supervisor, EnsureLoaded(call_id="d", model="first", stale_instance="i0", allowed=["a"]))
    assert located.stale_faulted  # i0 crashed by a fault of its own: the gateway does not resend its request
    assert supervisor.fleet.asked == [
        ("first", {"retry_failed": True}),
        ("first", {"stale_instance": "i0", "allowed": ["a"], "fallback": True}),  # requests may fall back
    ]
    # The model's defaults over the global ones, and the preset over both.
    assert located.defaults == SamplingDefaults(temperature=0.5, top_k=20, max_tokens=50)
    located = answer(supervisor, EnsureLoaded(call_id="e", model="first", preset="brief"))
    assert located.defaults == SamplingDefaults(temperature=0.5, top_k=20, max_tokens=3)


def test_an_unknown_preset_fails_before_anything_loads(config):
    supervisor = FakeSupervisor(LoadingFleet(config))
    with pytest.raises(NameRefused) as refused:
        answer(supervisor, EnsureLoaded(call_id="d", model="first", preset="verbose"))
    assert refused.value.code == ErrorCode.INVALID_REQUEST and "presets: brief" in str(refused.value)
    assert supervisor.fleet.asked == []


# -- the store and alias commands -------------------------------------------------------------------------


class Polled(FakeClient):
    """Answers each call with the next of `replies`."""

    def __init__(self, *replies):
        super().__init__(None)
        self.replies = list(replies)

    def call(self, make_call, timeout=None):
        self.calls.append(make_call(call_id="c1"))
        return self.replies.pop(0)


def pull_progress(state, done, **more):
    """A pull of two files, of which the weights have `done` bytes (no files known while it resolves)."""
    weights = FileProgress(path="model.safetensors", size=8_000_000, done=done)
    files = [] if state == "resolving" else [FileProgress(path="config.json", size=500, done=500), weights]
    progress = PullProgress(
        pull_id="pull-1", repo="org/x", revision="main", name="x", state=state, commit="ab" * 20, files=files, **more
    )
    return Pulls(call_id="c1", pulls=[progress])


def test_pull_without_a_terminal_prints_each_file_once_then_the_config_lines(monkeypatch):
    monkeypatch.setattr("supervisor.ctl.pull.POLL_SECONDS", 0)
    client = Polled(
        pull_progress("resolving", 0), pull_progress("downloading", 4_000_000), pull_progress("downloading", 8_000_000),
        pull_progress("done", 8_000_000, path="/store/x"),
    )  # fmt: skip
    out = io.StringIO()
    args = build_parser().parse_args(["ctl", "pull", "org/x@v2", "--quantize", "--q-bits", "8"])
    assert COMMANDS["pull"].run(client, args, out) == 0
    pull = client.calls[0]
    assert (pull.repo, pull.revision, pull.name, pull.convert.quantize, pull.convert.q_bits) == (
        "org/x",
        "v2",
        None,
        True,
        8,
    )
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "resolving org/x",
        "downloading org/x",
        "  config.json 500 B  (4.0 MB of 8.0 MB)",  # once, when it completed
        "  model.safetensors 8.0 MB  (8.0 MB of 8.0 MB)",
    ]
    assert lines[-2:] == ["  - id: x", "    source: x"]


def test_a_failed_pull_exits_1_with_its_reason():
    client, out = Polled(pull_progress("failed", 0, message="RepositoryNotFoundError: 404")), io.StringIO()
    assert COMMANDS["pull"].run(client, build_parser().parse_args(["ctl", "pull", "org/x"]), out) == 1
    assert out.getvalue().splitlines()[-1] == "pull of org/x failed: RepositoryNotFoundError: 404"


def test_models_pulls_and_aliases_are_tables():
    listing = StoreList(call_id="c1", store="/s", models=[
        StoredModel(name="x", size_bytes=2_500_000_000, source="hf:org/x", revision="main", commit="ab" * 20,
                    quantization="4-bit, group 64", used_by=["x", "y"]),
        StoredModel(name="z", size_bytes=1_000, partial=True),
    ])  # fmt: skip
    code, out, _ = run("models", listing)
    assert code == 0 and out.splitlines()[0] == "model store /s"
    assert out.splitlines()[2].split() == [
        "x",
        "hf:org/x",
        "main",
        f"({'ab' * 6})",
        "2.5",
        "GB",
        "4-bit,",
        "group",
        "64",
        "x,",
        "y",
    ]
    assert out.splitlines()[3].split()[:3] == ["z", "(unfinished", "pull)"]
    code, out, _ = run("pulls", pull_progress("downloading", 4_000_000))
    assert out.splitlines()[1].split()[:8] == ["pull-1", "org/x@main", "x", "downloading", "4.0", "MB", "of", "8.0"]
    table = AliasTable(
        call_id="c1",
        aliases=[AliasEntry(alias="qwen3", model="q"), AliasEntry(alias="gpt-4*", model="q", runtime=True)],
    )
    code, out, _ = run("aliases", table)
    assert [line.split() for line in out.splitlines()[1:]] == [["qwen3", "q", "config"], ["gpt-4*", "q", "run", "time"]]
    code, out, _ = run("aliases", table, "--json")
    assert json.loads(out)["aliases"][1] == {"alias": "gpt-4*", "model": "q", "runtime": True}


def test_aliases_added_at_run_time_are_kept_in_the_store(idle, config, tmp_path):
    answer(idle, AddAlias(call_id="c", alias="gpt-4*", model="first"))
    assert idle.fleet.config.resolve("gpt-4o").id == "a"
    again = load_config(tmp_path / "models.yaml")  # as a restarted supervisor reads it
    assert again.resolve("gpt-4o").id == "a" and again.names.aliases_of("a") == ["first", "gpt-4*"]
    table = answer(idle, RemoveAlias(call_id="c", alias="gpt-4*"))
    assert [e.alias for e in table.aliases] == ["first"]
    assert load_config(tmp_path / "models.yaml").resolve("gpt-4o") is None


def test_rm_removes_an_unused_model_and_refuses_one_being_pulled(idle):
    store = idle.fleet.config.store
    (store / "x").mkdir(parents=True)
    (store / "x" / "model.safetensors").write_bytes(b"\0" * 100)
    idle.pulls = FakePulls(pulling="busy")
    removed = answer(idle, RemoveStored(call_id="c", name="x"))
    assert removed.freed_bytes == 100 and removed.configured == ["a"] and not (store / "x").exists()
    with pytest.raises(FleetError) as refused:
        answer(idle, RemoveStored(call_id="c", name="busy"))
    assert refused.value.code == ErrorCode.CONFLICT
    with pytest.raises(FleetError) as missing:
        answer(idle, RemoveStored(call_id="c", name="nothing"))
    assert missing.value.code == ErrorCode.MODEL_NOT_FOUND


class FakePulls:
    def __init__(self, pulling):
        self.pulling = pulling

    def is_pulling(self, name):
        return name == self.pulling
