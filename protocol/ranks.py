"""Host-to-host calls for a model sharded over several hosts of a fleet (`shard.hosts`): rank 0's host (the owner)
asks each other host (a peer) to run its block of ranks. On the ctl plane, versioned and tagged like every call;
each host lets the other hosts of its config in by their public keys.

    owner                                   peer
    ReserveRanks(model, ranks)        ->    RanksReserved(addresses)        a free port per rank on its data address
    StartRanks(model, lease, ring)    ->    RanksHeld(ranks: pids)           charged in its budget, spawned
    RankLease(model, lease)           ->    RanksHeld(ranks: state, RSS)     every ~1 s; unrenewed, the peer stops them
    StopRanks(model, lease)           ->    RanksHeld(ranks: how they ended) once they are gone and their charge freed

The peer builds its ranks' launches from its own copy of the config (the model's source, engine settings): the
owner sends only what differs per load, the ring and the lease. A peer that cannot (no room in its budget, an
unknown model) answers CallFailed with a code, as any call fails.
"""

from __future__ import annotations

import msgspec

from protocol.codec import Call, Message

LEASE_SECONDS = 5.0  # a peer stops a lease's ranks this long after its last renewal; the owner gives up as long
RENEW_SECONDS = 1.0  # how often the owner renews


class ReserveRanks(Call, tag="reserve_ranks"):
    """Pick a free port on the peer's data address for each of `ranks` of `model` (nothing is held yet)."""

    model: str
    ranks: list[int]


class RanksReserved(Message, tag="ranks_reserved"):
    call_id: str
    addresses: list[str]  # host:port, one per rank asked for, in that order


class StartRanks(Call, tag="start_ranks"):
    """Charge and spawn `ranks` of `model`, joined to `ring_hosts`; they live while `lease` is renewed."""

    model: str
    owner: str  # the host of rank 0, for the peer's log and `ctl ps`
    lease: str  # names this load of the model (rank 0's instance id): later calls name it too
    ranks: list[int]
    ring_hosts: list[list[str]] = []  # every rank's host:port, in rank order (backend ring)


class RankLease(Call, tag="rank_lease"):
    """Renew `lease` (the peer stops its ranks LEASE_SECONDS after the last renewal); answered with their state."""

    model: str
    lease: str


class StopRanks(Call, tag="stop_ranks"):
    """Stop the ranks of `lease` and free their charge; answered once they are gone."""

    model: str
    lease: str


class GuestRank(msgspec.Struct, frozen=True, kw_only=True):
    rank: int
    pid: int
    memory_bytes: int = 0  # resident, as the peer reads it
    ended: str | None = None  # how it ended ("killed by SIGKILL", "stopped: lease expired"); None while it runs


class RanksHeld(Message, tag="ranks_held"):
    call_id: str
    host: str
    ranks: list[GuestRank] = []  # [] for a lease the peer does not hold (expired, stopped, never started)
    known: bool = True  # False: the peer holds no such lease


RANK_CALLS = (ReserveRanks, StartRanks, RankLease, StopRanks)
RANK_REPLIES = (RanksReserved, RanksHeld)
