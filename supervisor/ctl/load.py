"""Load a model (by id or alias) and wait until it serves; prints the idle models evicted to make room.
Retries a model marked failed."""

from protocol.ctl import Load


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the load")


def run(client, args, out) -> int:
    located = client.call(lambda call_id: Load(call_id=call_id, model=args.model), timeout=args.timeout)
    for evicted in located.evicted:
        print(f"evicted {evicted} to make room", file=out)
    print(f"{located.model_id} ready at {located.endpoint}", file=out)
    return 0
