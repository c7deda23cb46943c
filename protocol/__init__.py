"""Wire protocol shared by the gateway, the supervisor and the workers: the only package they all import.

One module per message family: `generation` (gateway <-> worker data plane), `control` (supervisor <-> worker),
`ctl` (gateway and operator CLI -> supervisor), `store` (the same, about the model store and pulls). `codec`
holds the base struct, the version and the decoders; `errors` the codes that cross process boundaries.
"""

from protocol.codec import PROTOCOL_VERSION, DecodeError, Message, decoder, encode, salvage_id
from protocol.errors import ErrorCode

__all__ = ["PROTOCOL_VERSION", "DecodeError", "ErrorCode", "Message", "decoder", "encode", "salvage_id"]
