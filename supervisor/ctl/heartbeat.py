"""Heartbeat, sent by every gateway of a fleet to every host about once a second: a host that stops answering
is down for that gateway until it answers again. No CLI part: `ctl status` is the operator's way."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from protocol import PROTOCOL_VERSION
from protocol.ctl import Heartbeat, HostAlive

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Heartbeat


async def execute(supervisor: Supervisor, call: Heartbeat) -> HostAlive:
    return HostAlive(
        call_id=call.call_id,
        host=supervisor.host_name,
        protocol_version=PROTOCOL_VERSION,
        pid=os.getpid(),
        uptime_seconds=time.monotonic() - supervisor.started,
    )
