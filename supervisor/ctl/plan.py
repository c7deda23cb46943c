"""Plan, sent by the gateways of a fleet before they load a model: may it run on this host, is it loaded here,
and how much budget would a load leave after this host's own eviction plan? Answered without acting (each host
still decides its memory when the load comes). No CLI part."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from protocol.ctl import LoadPlan, ModelState, Plan

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Plan


async def execute(supervisor: Supervisor, call: Plan) -> LoadPlan:
    fleet = supervisor.fleet
    # As EnsureLoaded resolves it (the fallback model for a name that leads nowhere): the same answer on every host.
    spec = fleet.resolve(call.model, call.allowed, fallback=True)
    slot = fleet.slots.get(spec.id)
    plan = LoadPlan(call_id=call.call_id, model_id=spec.id, here=slot is not None, hosts=fleet.config.served_on(spec))
    if slot is None:
        return plan
    plan = msgspec.structs.replace(plan, state=slot.state, in_flight=slot.worker.in_flight if slot.worker else 0)
    if slot.state in (ModelState.READY, ModelState.STARTING):
        return msgspec.structs.replace(plan, fits=True, free_after_bytes=fleet.budget.report().free_bytes)
    fleet.budget.estimate(slot.charge, slot.spec, slot.source, slot.draft_source)
    victims, free_after = fleet.budget.preview(slot.charge, (s for s in fleet.slots.values() if s is not slot))
    return msgspec.structs.replace(
        plan,
        exceeds=fleet.budget.exceeds(slot.charge),
        fits=victims is not None,
        free_after_bytes=free_after,
        evict=[v.spec.id for v in victims or ()],
    )
