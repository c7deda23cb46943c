"""StopRanks, sent by the host of rank 0 of a model sharded over hosts when the model stops there: its ranks here
stop and their charge is released before the answer (supervisor/guest_ranks.py). No CLI part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ranks import RanksHeld, StopRanks

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = StopRanks


async def execute(supervisor: Supervisor, call: StopRanks) -> RanksHeld:
    return await supervisor.guest_ranks().stop(call.model, call.lease, call.call_id)
