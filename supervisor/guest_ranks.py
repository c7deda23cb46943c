"""A peer's side of a model sharded over several hosts: the ranks this host runs for a model whose rank 0 (and
whose serving) is on another host, its owner (protocol/ranks.py has the calls; supervisor/remote_ranks.py the
owner's side).

Each load's ranks are charged in this host's own MemoryBudget for their share (the model's estimate over its
rank count, times the ranks here), making room by evicting this host's own idle models as a load does; the
charge is never a slot, so no plan ever evicts it while the lease lives. They are local processes with the
stdin lifeline and in the orphan registry, as any worker; one rank's end stops the others here. They live
while the owner renews the lease: LEASE_SECONDS without a renewal (the owner's supervisor or host gone) and
they are stopped here, so no rank is left holding memory. Their charge is released once every one has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from protocol import ErrorCode
from protocol.control import ModelType
from protocol.ctl import ModelInfo, ModelState, RankInfo
from protocol.ranks import LEASE_SECONDS, GuestRank, RanksHeld, StartRanks
from supervisor.config import GB, ModelSpec
from supervisor.fleet import Fleet, FleetError
from supervisor.host import Host
from supervisor.memory_budget import Charge
from supervisor.sharding import rank_launches, ranks_on, ring_hosts
from supervisor.worker_process import LocalRank, start_process

log = logging.getLogger("supervisor.ranks")
WATCH_SECONDS = 0.5  # how often leases are checked for expiry
STOP_GRACE = 2.0  # a follower ends at SIGTERM at once; SIGKILL after this


class Guest:
    """One load's ranks of one model here, for its owner."""

    memory = None  # the budget counts its estimate (Reporting: no report of its own)

    def __init__(self, spec: ModelSpec, owner: str, lease: str, charge: Charge):
        self.spec, self.owner, self.lease, self.charge = spec, owner, lease, charge
        self.ranks: list[LocalRank] = []
        self.renewed = time.monotonic()
        self.started = time.monotonic()
        self.starting = True  # evicting and spawning: the lease runs from the StartRanks answer

    @property
    def running(self) -> list[LocalRank]:
        return [r for r in self.ranks if r.ended is None]

    def kill(self) -> None:
        for rank in self.ranks:
            rank.kill()

    async def exited(self) -> None:
        await asyncio.gather(*(r.wait() for r in self.ranks))


class GuestRanks:
    def __init__(self, fleet: Fleet, host: Host):
        self.fleet, self.host = fleet, host
        self.guests: dict[str, Guest] = {}  # model id -> its live lease here

    def _spec(self, model: str, ranks: list[int]) -> ModelSpec:
        """The config's model whose `ranks` this host runs; FleetError if the config says otherwise."""
        spec = self.fleet.config.models.get(model)
        if spec is None or spec.shard is None or self.host.name not in spec.shard.hosts[1:]:
            raise FleetError(ErrorCode.INVALID_REQUEST, f"host {self.host.name} runs no ranks of {model!r}")
        if ranks != (mine := ranks_on(spec.shard, self.host.name)):
            raise FleetError(
                ErrorCode.INVALID_REQUEST, f"host {self.host.name} runs ranks {mine} of {model}, not {ranks}"
            )
        return spec

    def reserve(self, model: str, ranks: list[int]) -> list[str]:
        self._spec(model, ranks)
        return [address for [address] in ring_hosts(self.host.data_address, len(ranks))]

    async def start(self, call: StartRanks) -> RanksHeld:
        spec = self._spec(call.model, call.ranks)
        if (old := self.guests.pop(spec.id, None)) is not None:
            log.warning("%s: a new load from host %s replaces lease %s", spec.id, call.owner, old.lease)
            await self._stop(old)
        fleet = self.fleet
        charge = fleet.budget.open(f"{spec.id} (ranks for {call.owner}, lease {call.lease})")
        fleet.budget.estimate(charge, spec, fleet.config.source_of(spec))
        victims = fleet.budget.plan(charge, fleet.slots.values())
        if fleet.budget.exceeds(charge) or victims is None:
            fleet.budget.close(charge)
            budget, free = fleet.budget.total / GB, fleet.budget.report().free_bytes / GB
            needs = f"ranks {call.ranks} of {spec.id} need {charge.estimate / GB:.2f} GB"
            if fleet.budget.exceeds(charge):
                raise FleetError(ErrorCode.INSUFFICIENT_MEMORY, f"{needs}, more than its whole {budget:.2f} GB budget")
            raise FleetError(
                ErrorCode.WORKER_UNAVAILABLE,
                f"{needs}: {free:.2f} GB of its {budget:.2f} GB budget is free, and busy or pinned models hold the "
                f"rest",
                retryable=True,
            )
        fleet.budget.grant(charge)  # no await since the plan: the victims and the grant are one step
        guest = self.guests[spec.id] = Guest(spec, call.owner, call.lease, charge)
        try:
            await fleet.evict(victims, f"ranks {call.ranks} of {spec.id} for host {call.owner}")
            leader = fleet.launch(spec, fleet.config.source_of(spec), charge.estimate)
            for launch in rank_launches(leader, spec.shard, call.ring_hosts, call.ranks):
                rank = LocalRank(launch.shard.rank, await start_process(launch))
                guest.ranks.append(rank)
                fleet.registry.add(rank.pid)
                asyncio.ensure_future(rank.wait()).add_done_callback(lambda _, r=rank: self._on_exit(guest, r))
        except BaseException:
            self.guests.pop(spec.id, None)
            guest.kill()
            await guest.exited()
            self._release(guest)
            raise
        fleet.budget.attach(charge, guest)
        guest.starting, guest.renewed = False, time.monotonic()
        log.info("%s: ranks %s for host %s started (pids %s, lease %s)", spec.id, call.ranks, call.owner,
                 [r.pid for r in guest.ranks], call.lease)  # fmt: skip
        return self.held(guest, call.call_id)

    def _on_exit(self, guest: Guest, rank: LocalRank) -> None:
        self.fleet.registry.remove(rank.pid)
        if guest.running:
            log.error("%s: rank %d (pid %d) %s: stopping its other ranks here", guest.spec.id, rank.rank, rank.pid,
                      rank.ended)  # fmt: skip
            guest.kill()
            return
        self._release(guest)

    def _release(self, guest: Guest) -> None:
        """Every rank has exited: the charge goes (once)."""
        if self.fleet.budget.close(guest.charge):
            log.info("%s: every rank for host %s has exited: its charge is released", guest.spec.id, guest.owner)

    def renew(self, model: str, lease: str, call_id: str) -> RanksHeld:
        guest = self.guests.get(model)
        if guest is None or guest.lease != lease:
            return RanksHeld(call_id=call_id, host=self.host.name, known=False)
        guest.renewed = time.monotonic()
        return self.held(guest, call_id)

    async def stop(self, model: str, lease: str, call_id: str) -> RanksHeld:
        guest = self.guests.get(model)
        if guest is None or guest.lease != lease:
            return RanksHeld(call_id=call_id, host=self.host.name, known=False)
        del self.guests[model]
        await self._stop(guest)
        log.info("%s: ranks for host %s stopped at its request", model, guest.owner)
        return self.held(guest, call_id)

    async def _stop(self, guest: Guest) -> None:
        for rank in guest.running:
            with contextlib.suppress(ProcessLookupError):
                rank.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(guest.exited(), STOP_GRACE)
        guest.kill()
        await guest.exited()
        self._release(guest)

    def held(self, guest: Guest, call_id: str) -> RanksHeld:
        ranks = [GuestRank(rank=r.rank, pid=r.pid, memory_bytes=r.memory_bytes, ended=r.ended) for r in guest.ranks]
        return RanksHeld(call_id=call_id, host=self.host.name, ranks=ranks)

    async def watch(self) -> None:
        """Stop the ranks of every lease not renewed for LEASE_SECONDS (forever; cancelled at shutdown)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            for model, guest in list(self.guests.items()):
                if not guest.starting and time.monotonic() - guest.renewed >= LEASE_SECONDS:
                    running = guest.running
                    log.error("%s: host %s has not renewed the lease of ranks %s (pids %s) for %.0fs: %s", model,
                              guest.owner, [r.rank for r in running], [r.pid for r in running], LEASE_SECONDS,
                              "stopping them" if running else "every one had exited")  # fmt: skip
                    del self.guests[model]
                    guest.kill()

    async def stop_all(self) -> None:
        guests, self.guests = list(self.guests.values()), {}
        await asyncio.gather(*(self._stop(g) for g in guests))

    def infos(self) -> list[ModelInfo]:
        """A `ctl ps` row for each model whose ranks run here: whose they are, each rank's pid and memory."""
        return [
            ModelInfo(
                id=guest.spec.id,
                aliases=[],
                type=ModelType(guest.spec.type),
                source=guest.spec.source,
                state=ModelState.READY,
                context_length=0,
                memory_estimate_bytes=guest.charge.estimate,
                memory_bytes=sum(r.memory_bytes for r in guest.ranks),
                charged_bytes=guest.charge.bytes,
                pid=guest.ranks[0].pid if guest.ranks else None,
                uptime_seconds=time.monotonic() - guest.started,
                compute=f"ranks for host {guest.owner}",
                ranks=[
                    RankInfo(rank=r.rank, pid=r.pid, host=self.host.name, memory_bytes=r.memory_bytes)
                    for r in guest.running
                ],
                shard_mode=guest.spec.shard.mode,
                ranks_for=guest.owner,
            )
            for guest in self.guests.values()
        ]
