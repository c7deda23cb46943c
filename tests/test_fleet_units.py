"""A fleet's parts without processes: where placement sends a request, the key pairs `ctl keygen` writes, the
`hosts:` section as the supervisor and the gateway read it, and a host's Plan answered from its budget."""

from __future__ import annotations

import asyncio
import io
import stat
from collections import Counter

import pytest
import zmq

from gateway.config import load_gateway_config
from gateway.placement import choose
from protocol.ctl import LoadPlan, ModelState, Plan
from protocol.curve import fingerprint, key_pair_from_file, make_key_pair, public_key
from protocol.launch import advertised, worker_endpoint
from supervisor.cli import build_parser
from supervisor.config import load_config
from supervisor.ctl import COMMANDS, HANDLERS
from supervisor.fleet import Fleet, FleetError
from supervisor.host import host_of
from supervisor.orphans import WorkerRegistry

GB = 1024**3


def plan(state=ModelState.STOPPED, here=True, in_flight=0, fits=True, free=0, exceeds=False) -> LoadPlan:
    return LoadPlan(call_id="c", model_id="m", here=here, state=state, in_flight=in_flight, fits=fits,
                    free_after_bytes=free, exceeds=exceeds)  # fmt: skip


def idle(host: str, model: str) -> int:
    return 0


def test_a_session_keeps_its_replica_and_only_the_sessions_of_a_replica_that_goes_move():
    three = {h: plan(ModelState.READY) for h in "abc"}
    sessions = [f"session:vista:{i}" for i in range(300)]
    before = {s: choose(three, idle, s) for s in sessions}
    assert all(choose(three, idle, s) == before[s] for s in sessions)  # the same replica every time
    assert set(Counter(before.values())) == {"a", "b", "c"}  # and sessions spread over the replicas
    two = {h: p for h, p in three.items() if h != "c"}
    after = {s: choose(two, idle, s) for s in sessions}
    assert all(after[s] == before[s] for s in sessions if before[s] != "c")  # only c's sessions moved


def test_without_a_session_the_fewest_in_flight_wins_and_ties_take_turns():
    ready = {"a": plan(ModelState.READY, in_flight=5), "b": plan(ModelState.READY, in_flight=0)}
    assert choose(ready, lambda h, m: {"a": 0, "b": 2}[h]) == "a"  # this gateway's own count first
    assert choose(ready, idle) == "b"  # then the supervisors' (every gateway's requests)
    level = {"a": plan(ModelState.READY), "b": plan(ModelState.READY)}
    assert [choose(level, idle, turn=t) for t in range(4)] == ["a", "b", "a", "b"]


def test_a_load_joins_one_in_progress_else_goes_where_the_most_budget_is_left():
    loading = {"a": plan(free=9 * GB), "b": plan(ModelState.STARTING)}
    assert choose(loading, idle) == "b"
    roomy = {"a": plan(free=2 * GB), "b": plan(free=5 * GB), "c": plan(here=False, free=50 * GB)}
    assert choose(roomy, idle) == "b"  # c may not run it
    busy = {"a": plan(fits=False, free=-1 * GB), "b": plan(free=1)}
    assert choose(busy, idle) == "b"  # fitting beats a bigger but unplannable budget
    assert choose({"a": plan(ModelState.FAILED, free=9 * GB), "b": plan(free=1)}, idle) == "b"
    assert choose({"a": plan(exceeds=True, fits=False, free=-GB), "b": plan(fits=False, free=-2 * GB)}, idle) == "b"


def test_keygen_writes_a_0600_secret_and_prints_only_the_public_key(tmp_path):
    out = io.StringIO()
    args = build_parser().parse_args(["ctl", "keygen", str(tmp_path / "keys"), "gateway"])
    assert COMMANDS["keygen"].run(None, args, out) == 0
    public, secret = tmp_path / "keys" / "gateway.key", tmp_path / "keys" / "gateway.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    pair = key_pair_from_file(secret)
    assert zmq.curve_public(pair.secret) == pair.public == public_key(str(public))
    assert pair.public.decode() in out.getvalue() and pair.secret.decode() not in out.getvalue()
    assert pair.secret.decode() not in repr(pair)
    again = io.StringIO()
    assert COMMANDS["keygen"].run(None, args, again) == 1 and "not overwritten" in again.getvalue()
    assert key_pair_from_file(secret) == pair


FLEET = """
memory_budget_gb: 8
hosts:
  - {name: a, endpoint: "tcp://127.0.0.1:7101", public_key: keys/a.key}
  - {name: b, endpoint: "tcp://10.0.0.2:7100", bind: "tcp://0.0.0.0:7100", public_key: keys/b.key, memory_budget_gb: 2}
host_clients: [keys/gateway.key]
models:
  - {id: chat, source: x, memory_gb: 1}
  - {id: whisper, source: y, memory_gb: 1, hosts: [b]}
"""


@pytest.fixture
def fleet_config(tmp_path):
    for name in ("a", "b", "gateway"):
        make_key_pair(tmp_path / "keys", name)
    path = tmp_path / "models.yaml"
    path.write_text(FLEET)
    return path


def test_each_host_serves_the_models_allowed_on_it_and_resolves_them_all(fleet_config, tmp_path):
    for host, served, budget in (("a", ["chat"], 8), ("b", ["chat", "whisper"], 2)):
        config = load_config(fleet_config, host)
        fleet = Fleet(config, str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path))
        assert list(fleet.slots) == served and config.memory_budget_gb == budget
        assert fleet.resolve("whisper").id == "whisper"  # every host knows every name
    a = load_config(fleet_config, "a")
    fleet = Fleet(a, str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path))
    with pytest.raises(FleetError, match="whisper does not run on host a"):
        fleet.slot("whisper")
    answer = asyncio.run(HANDLERS[Plan](_Supervisor(fleet), Plan(call_id="c", model="whisper")))
    assert answer == LoadPlan(call_id="c", model_id="whisper", here=False, hosts=["b"])
    answer = asyncio.run(HANDLERS[Plan](_Supervisor(fleet), Plan(call_id="c", model="chat")))
    assert (answer.here, answer.state, answer.fits, answer.free_after_bytes) == (True, "stopped", True, 7 * GB)
    assert load_gateway_config(fleet_config).hosts[1].bind == "tcp://0.0.0.0:7100"


class _Supervisor:
    def __init__(self, fleet):
        self.fleet, self.host_name = fleet, "a"


def test_a_host_starts_only_with_its_own_key_pair(fleet_config, tmp_path):
    config = load_config(fleet_config, "b")
    keys = tmp_path / "keys"
    host = host_of(config, str(keys / "b.key_secret"))
    assert (host.name, host.bind, host.data_address) == ("b", "tcp://0.0.0.0:7100", "0.0.0.0")
    assert host.allowed == [public_key(str(keys / "gateway.key"))]
    with pytest.raises(ValueError, match="is not host b's key pair") as wrong:
        host_of(config, str(keys / "a.key_secret"))
    assert fingerprint(public_key(str(keys / "a.key"))) in str(wrong.value)
    with pytest.raises(ValueError, match="needs its key pair file"):
        host_of(config, None)
    with pytest.raises(ValueError, match="say which one this is"):
        host_of(load_config(fleet_config), None)
    # Its workers bind any free port on its address; gateways are told the host's public address for it.
    assert worker_endpoint("/run", "chat", host.data_address) == "tcp://0.0.0.0:*"
    assert advertised("tcp://0.0.0.0:41234", "tcp://10.0.0.2:7100") == "tcp://10.0.0.2:41234"
    assert advertised("ipc:///run/worker-chat.sock", "tcp://10.0.0.2:7100") == "ipc:///run/worker-chat.sock"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("hosts: [b]", "hosts: [c]"), r"hosts \['c'\] are not in the config's hosts"),
        (("name: b,", "name: a,"), "listed twice"),
        (('tcp://10.0.0.2:7100", bind', 'http://10.0.0.2:7100", bind'), "not a tcp://ADDRESS:PORT endpoint"),
        (("name: b,", "name: local,"), "not 'local'"),
    ],
)
def test_a_bad_hosts_section_stops_both_readers_with_a_clear_message(fleet_config, change, complaint):
    fleet_config.write_text(FLEET.replace(*change))
    with pytest.raises(ValueError, match=complaint):
        load_config(fleet_config)
    if "are not in" not in complaint:  # the gateway reads hosts, not models
        with pytest.raises(ValueError, match=complaint):
            load_gateway_config(fleet_config)
