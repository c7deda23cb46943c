"""Is the supervisor up, and does every loaded worker answer a ping through its generation loop?"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from protocol import PROTOCOL_VERSION
from protocol.ctl import Status, StatusReport
from supervisor.ctl.format import budget_line, duration

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Status  # `ps` sends it too


def add_arguments(parser) -> None:
    pass


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))
    loaded = [m for m in report.models if m.pid]
    print(
        f"supervisor pid {report.pid}, up {duration(report.uptime_seconds)}, protocol v{report.protocol_version}",
        file=out,
    )
    if report.memory is not None:
        print(budget_line(report.memory), file=out)
    print(f"models: {len(loaded)} loaded of {len(report.models)} configured", file=out)
    unhealthy = [m for m in loaded if m.alive is False]
    for m in loaded:
        ping = f"pong in {m.ping_ms:.1f} ms" if m.alive else "NO PONG"
        print(f"  {m.id}: {m.state}, pid {m.pid}, {ping}", file=out)
    for m in report.models:
        if m.state == "failed":
            print(f"  {m.id}: failed: {m.last_error}", file=out)
    return 1 if unhealthy else 0


async def execute(supervisor: Supervisor, call: Status) -> StatusReport:
    """Pings every live worker (through its generation loop) before answering."""
    fleet = supervisor.fleet
    slots = list(fleet.slots.values())
    pings = await asyncio.gather(*(fleet.ping(s, call.ping_timeout) for s in slots))
    models = [
        s.info(alive=alive if s.worker else None, ping_ms=ms) for s, (alive, ms) in zip(slots, pings, strict=True)
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
    )
