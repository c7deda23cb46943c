"""Pin a model: it is never evicted to make room for another (it still unloads on `ctl unload`). Pinning
does not load it; `pinned: true` in the config does, at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import Pin, Pinned

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Pin  # `unpin` sends it too, with pinned=False


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: Pin(call_id=call_id, model=args.model, pinned=True))
    print(f"{reply.model_id} pinned", file=out)
    return 0


async def execute(supervisor: Supervisor, call: Pin) -> Pinned:
    slot = supervisor.fleet.pin(call.model, call.pinned)
    return Pinned(call_id=call.call_id, model_id=slot.spec.id, pinned=slot.pinned)
