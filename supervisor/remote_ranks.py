"""The owner's side of a model sharded over several hosts (`shard.hosts`): rank 0's supervisor reserves the other
hosts' ring ports, has their supervisors start and charge their ranks (protocol/ranks.py), and renews each host's
lease every RENEW_SECONDS. A RemoteRank looks to WorkerProcess as a local follower does (pid, host, wait(), kill(),
ended), so any rank's end stops every rank, wherever it runs: a lease answer that says a rank ended, or no answer
for LEASE_SECONDS, is that rank's end. kill() is StopRanks; unanswered, the peer stops them itself when the lease
runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time

from protocol.launch import WorkerLaunch
from protocol.ranks import LEASE_SECONDS, RENEW_SECONDS, RankLease, RanksHeld, ReserveRanks, StartRanks, StopRanks
from supervisor.config import ShardSpec
from supervisor.host import Host
from supervisor.peer_client import PeerClient, PeerError
from supervisor.sharding import ranks_on, ring_hosts

log = logging.getLogger("supervisor.ranks")
CALL_SECONDS = 10.0  # a reserve, a stop: quick on the peer
START_SECONDS = 150.0  # a start may wait for the peer's idle models to be evicted first


def _peers(host: Host, shard: ShardSpec) -> list[PeerClient]:
    return [PeerClient(host.peers[name], host.keys) for name in shard.hosts if name != host.name]


async def reserve_ring(host: Host, model_id: str, shard: ShardSpec) -> list[list[str]]:
    """Every rank's ring address (host:port on its host's data address), rank order; [] for backends but ring."""
    if shard.backend != "ring":
        return []
    ring: list[list[str]] = [[] for _ in range(shard.ranks)]
    mine = ranks_on(shard, host.name)
    for rank, address in zip(mine, ring_hosts(host.data_address, len(mine)), strict=True):
        ring[rank] = address
    for client in _peers(host, shard):
        ranks = ranks_on(shard, client.peer.name)
        call = lambda call_id, r=ranks: ReserveRanks(call_id=call_id, model=model_id, ranks=r)  # noqa: E731
        reply = await client.call(call, CALL_SECONDS)
        for rank, address in zip(ranks, reply.addresses, strict=True):
            ring[rank] = [address]
    return ring


async def start_peers(host: Host, leader: WorkerLaunch, shard: ShardSpec, ring: list[list[str]]) -> list[RemoteRank]:
    """Have every other host start its ranks for the load whose rank 0 is `leader`; PeerError if one cannot
    (those already started are stopped)."""
    leases: list[PeerLease] = []
    try:
        for client in _peers(host, shard):
            lease = PeerLease(client, leader.model_id, leader.instance_id)
            held = await client.call(
                lambda call_id, c=client: StartRanks(
                    call_id=call_id, model=leader.model_id, owner=host.name, lease=leader.instance_id,
                    ranks=ranks_on(shard, c.peer.name), ring_hosts=ring,
                ),
                START_SECONDS,
            )  # fmt: skip
            leases.append(lease)
            lease.begin(held)
    except PeerError:
        for lease in leases:
            lease.stop()
        await asyncio.gather(*(r.wait() for lease in leases for r in lease.ranks))
        raise
    return [rank for lease in leases for rank in lease.ranks]


class RemoteRank:
    """A rank > 0 of a sharded model that another host's supervisor runs for this one."""

    def __init__(self, lease: PeerLease, rank: int, pid: int):
        self.lease, self.rank, self.pid = lease, rank, pid
        self.host = lease.client.peer.name
        self.memory_bytes = 0  # resident, as its host last said
        self.ended: str | None = None  # how it ended; None while it runs
        self._done = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        await asyncio.shield(self._done)

    def kill(self) -> None:
        self.lease.stop()

    def end(self, how: str) -> None:
        if not self._done.done():
            self.ended = how
            self._done.set_result(None)


class PeerLease:
    """This load's ranks on one other host, renewed while any of them runs."""

    def __init__(self, client: PeerClient, model_id: str, lease: str):
        self.client, self.model_id, self.lease = client, model_id, lease
        self.ranks: list[RemoteRank] = []
        self._stopping: asyncio.Future | None = None
        self._renewing: asyncio.Future | None = None

    def begin(self, held: RanksHeld) -> None:
        self.ranks = [RemoteRank(self, r.rank, r.pid) for r in held.ranks]
        self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        answered = time.monotonic()
        while not self._stopping and any(r.ended is None for r in self.ranks):
            await asyncio.sleep(RENEW_SECONDS)
            if self._stopping:
                return
            try:
                lease = lambda call_id: RankLease(call_id=call_id, model=self.model_id, lease=self.lease)  # noqa: E731
                self._update(await self.client.call(lease, RENEW_SECONDS * 2))
                answered = time.monotonic()
            except PeerError as exc:
                if time.monotonic() - answered >= LEASE_SECONDS:
                    log.error("%s: host %s renewed no lease for %.0fs (%s)", self.model_id, self.client.peer.name,
                              LEASE_SECONDS, exc)  # fmt: skip
                    self._end_all(f"lost: its host answered no lease renewal for {LEASE_SECONDS:.0f}s")

    def _update(self, held: RanksHeld) -> None:
        if not held.known:
            self._end_all("gone: its host no longer holds the lease")
        by_rank = {r.rank: r for r in held.ranks}
        for rank in self.ranks:
            if (now := by_rank.get(rank.rank)) is not None:
                rank.memory_bytes = now.memory_bytes
                if now.ended:
                    rank.end(now.ended)

    def _end_all(self, how: str) -> None:
        for rank in self.ranks:
            rank.end(how)

    def stop(self) -> None:
        """StopRanks, once; each rank ends when the peer says they are gone (or, unanswered, now: the peer stops
        them when the lease runs out)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def _stop(self) -> None:
        stop = lambda call_id: StopRanks(call_id=call_id, model=self.model_id, lease=self.lease)  # noqa: E731
        try:
            self._update(await self.client.call(stop, CALL_SECONDS))
            self._end_all("stopped")
        except PeerError as exc:
            log.warning("%s: stopping its ranks on host %s: %s (they stop when the lease runs out)", self.model_id,
                        self.client.peer.name, exc)  # fmt: skip
            self._end_all(f"not confirmed stopped by its host ({exc}): stopped there when the lease runs out")
