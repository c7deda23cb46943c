"""Unpin a model: it may be evicted again when it is idle and another model needs its memory."""

from protocol.ctl import Pin


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id or alias")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: Pin(call_id=call_id, model=args.model, pinned=False))  # answered by pin.py
    print(f"{reply.model_id} unpinned", file=out)
    return 0
