"""StartRanks, sent by the host of rank 0 of a model sharded over hosts: charge this host's ranks in its budget
(evicting its own idle models if it must) and spawn them (supervisor/guest_ranks.py). No CLI part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ranks import RanksHeld, StartRanks

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = StartRanks


async def execute(supervisor: Supervisor, call: StartRanks) -> RanksHeld:
    return await supervisor.guest_ranks().start(call)
