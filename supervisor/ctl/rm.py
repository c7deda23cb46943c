"""Remove a model from the store (or a pull that did not finish), freeing its disk space. Refused while a running
model uses it (unload that model first) or while it is being pulled."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from protocol import ErrorCode
from protocol.ctl import ModelState
from protocol.store import RemovedStored, RemoveStored
from supervisor.ctl.format import filesize
from supervisor.fleet import FleetError
from supervisor.model_store import StoreError, check_name, delete, partial_dir, size_on_disk, take_away

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = RemoveStored
RUNNING = (ModelState.STARTING, ModelState.READY, ModelState.STOPPING)


def add_arguments(parser) -> None:
    parser.add_argument("name", help="a model's name in the store (`ctl models` lists them)")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: RemoveStored(call_id=call_id, name=args.name), timeout=600)
    print(f"removed {reply.name} ({filesize(reply.freed_bytes)} freed)", file=out)
    if reply.configured:
        print(f"note: configured models still name it and will fail to load: {', '.join(reply.configured)}", file=out)
    return 0


async def execute(supervisor: Supervisor, call: RemoveStored) -> RemovedStored:
    fleet, store = supervisor.fleet, supervisor.fleet.config.store
    try:
        path = store / check_name(call.name)
    except StoreError as exc:
        raise FleetError(ErrorCode.INVALID_REQUEST, str(exc)) from None
    if supervisor.pulls.is_pulling(call.name):
        raise FleetError(ErrorCode.CONFLICT, f"{call.name} is being pulled: cancel the pull first (`ctl pulls`)")
    found = [p for p in (path, partial_dir(store, call.name)) if p.is_dir()]
    if not found:
        raise FleetError(ErrorCode.MODEL_NOT_FOUND, f"the store holds no model named '{call.name}' (see `ctl models`)")
    users = [s for s in fleet.slots.values() if str(path) in (s.source, s.draft_source)]
    running = [s.spec.id for s in users if s.state in RUNNING]
    if running and path.is_dir():
        raise FleetError(
            ErrorCode.CONFLICT,
            f"{call.name} is in use by running model(s) {', '.join(running)}: unload first "
            f"(`supervisor ctl unload {running[0]}`)",
        )
    doomed = [take_away(p) for p in found]  # at once, before any await: nothing can start loading it meanwhile

    def free() -> int:
        freed = sum(size_on_disk(p) for p in doomed)
        for p in doomed:
            delete(p)
        return freed

    freed = await asyncio.to_thread(free)
    return RemovedStored(call_id=call.call_id, name=call.name, freed_bytes=freed, configured=[s.spec.id for s in users])
