"""Pin a model: it is never evicted to make room for another (it still unloads on `ctl unload`). Pinning
does not load it; `pinned: true` in the config does, at start-up."""

from protocol.ctl import Pin


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: Pin(call_id=call_id, model=args.model, pinned=True))
    print(f"{reply.model_id} pinned", file=out)
    return 0
