"""Message base, msgpack codec and the protocol version.

Every message is a frozen msgspec Struct with an explicit string tag, so a renamed class never changes the
wire. Each socket decodes with one typed decoder over the union it may receive: a frame that is not valid
msgpack, carries an unknown tag or has a field of the wrong type is rejected right there.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

# Bump on any change an older peer cannot read. New optional fields with defaults do not need a bump.
PROTOCOL_VERSION = 2  # 2: a worker's message to a gateway holds one or more events, a frame each


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of every wire message; subclasses set `tag=` to their stable wire name."""


class Call(Message, omit_defaults=False, kw_only=True):
    """Base of every call a supervisor answers. Its fields are always encoded (no omitted defaults), so
    `protocol_version` is on the wire even when it is this version: a peer of another version sees it and refuses."""

    call_id: str
    protocol_version: int = PROTOCOL_VERSION


_encoder = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decoder(*types: type[Message]) -> msgspec.msgpack.Decoder:
    """A decoder that accepts exactly `types` (a tagged union) and rejects everything else."""
    return msgspec.msgpack.Decoder(Union[types] if len(types) > 1 else types[0])  # noqa: UP007


DecodeError = msgspec.DecodeError  # malformed frames and schema violations alike (ValidationError is a subclass)


def salvage_id(frame: bytes, key: str) -> str | None:
    """Best-effort read of `key` (request_id / call_id) from a frame the typed decoder rejected,
    so the sender can be told what was wrong instead of waiting for a reply that never comes."""
    try:
        loose: Any = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError:
        return None
    value = loose.get(key) if isinstance(loose, dict) else None
    return value if isinstance(value, str) else None
