"""Is the supervisor up, and does every loaded worker answer a ping through its generation loop?"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from protocol import PROTOCOL_VERSION
from protocol.ctl import Status, StatusReport
from supervisor.ctl.format import json_flag, print_json, show, status_view

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Status  # `ps` sends it too


def add_arguments(parser) -> None:
    json_flag(parser)


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))
    unhealthy = any(m.pid and m.alive is False for m in report.models)
    if args.json:
        print_json(report, out)
    else:
        show(out, *status_view(report))
    return 1 if unhealthy else 0


async def execute(supervisor: Supervisor, call: Status) -> StatusReport:
    """Pings every live worker (through its generation loop) before answering."""
    fleet = supervisor.fleet
    slots = list(fleet.slots.values())
    pings = await asyncio.gather(*(fleet.ping(s, call.ping_timeout) for s in slots))
    models = [
        fleet.info(slot, alive=alive if slot.worker else None, ping_ms=ms)
        for slot, (alive, ms) in zip(slots, pings, strict=True)
    ]
    return StatusReport(
        call_id=call.call_id,
        pid=os.getpid(),
        protocol_version=PROTOCOL_VERSION,
        uptime_seconds=time.monotonic() - supervisor.started,
        memory_budget_bytes=fleet.budget.total,
        models=models,
        memory=fleet.budget.report(),
        host=supervisor.host_name,
        guest_ranks=supervisor.guests.infos() if supervisor.guests else [],
    )
