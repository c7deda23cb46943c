"""ReserveRanks, sent by the host of rank 0 of a model sharded over hosts: a free port on this host's data address
for each of its ranks (supervisor/guest_ranks.py). No CLI part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ranks import RanksReserved, ReserveRanks

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = ReserveRanks


async def execute(supervisor: Supervisor, call: ReserveRanks) -> RanksReserved:
    return RanksReserved(call_id=call.call_id, addresses=supervisor.guest_ranks().reserve(call.model, call.ranks))
