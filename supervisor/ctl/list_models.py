"""ListModels, sent by gateways (/v1/models, memory usage, metrics) and by `ctl memory`: every configured model
the caller may use, and the memory budget. No CLI part of its own: `ctl memory` renders it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import ListModels, ModelList

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = ListModels


async def execute(supervisor: Supervisor, call: ListModels) -> ModelList:
    fleet = supervisor.fleet
    models = [fleet.info(s) for s in fleet.slots.values() if fleet.config.allows(s.spec, call.allowed)]
    guests = supervisor.guests.infos() if supervisor.guests else []
    return ModelList(
        call_id=call.call_id,
        models=models,
        memory=fleet.budget.report(),
        host=supervisor.host_name,
        guest_ranks=guests,
    )
