"""Load a model (by id or alias) and wait until it serves; prints the idle models evicted to make room.
Retries a model marked failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import Load, Located
from supervisor.ctl.ensure_loaded import located

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Load


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the load")


def run(client, args, out) -> int:
    located = client.call(lambda call_id: Load(call_id=call_id, model=args.model), timeout=args.timeout)
    for evicted in located.evicted:
        print(f"evicted {evicted} to make room", file=out)
    print(f"{located.model_id} ready at {located.endpoint}", file=out)
    return 0


async def execute(supervisor: Supervisor, call: Load) -> Located:
    return located(call, *await supervisor.fleet.ensure_loaded(call.model, retry_failed=True))
