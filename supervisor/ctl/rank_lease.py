"""RankLease, sent about once a second by the host of rank 0 of a model sharded over hosts: its ranks here live on
(supervisor/guest_ranks.py); the answer says how each is. No CLI part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ranks import RankLease, RanksHeld

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = RankLease


async def execute(supervisor: Supervisor, call: RankLease) -> RanksHeld:
    return supervisor.guest_ranks().renew(call.model, call.lease, call.call_id)
