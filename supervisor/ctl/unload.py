"""Unload a model: drain its in-flight requests, stop its worker, give its memory back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import Unload, Unloaded

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Unload


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the stop")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: Unload(call_id=call_id, model=args.model), timeout=args.timeout)
    if reply.pid is None:
        print(f"{reply.model_id} was not loaded", file=out)
    else:
        print(f"{reply.model_id} unloaded (worker pid {reply.pid} stopped)", file=out)
    return 0


async def execute(supervisor: Supervisor, call: Unload) -> Unloaded:
    fleet = supervisor.fleet
    pid = await fleet.unload(call.model)
    return Unloaded(call_id=call.call_id, model_id=fleet.slot(call.model).spec.id, pid=pid)
