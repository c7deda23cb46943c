"""A POST answered with server-sent events, over a unix socket: h11 straight on asyncio's streams.

It carries every token of a gguf model from llama-server to the worker, on the cores llama-server computes on, so
its cost per event is the server's overhead per token: measured against llama-server, httpx's async stack
(httpcore, anyio, its byte, text and line decoders) took about 0.8 ms of CPU per event, this about 0.3 ms. h11
still does the HTTP/1.1 parsing (status, headers, chunked framing), as it does under httpx. One connection per
request: closing it (the request's task cancelled) is how llama-server learns to stop the sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11

READ_BYTES = 65536
ERRORS = (OSError, h11.ProtocolError)  # the server is gone or broke the protocol: not the request's fault


class EventStream:
    """The response to one POST: its status, then its body whole (`read`) or as SSE data payloads (`events`)."""

    def __init__(self, reader: asyncio.StreamReader, connection: h11.Connection, status: int):
        self._reader = reader
        self._connection = connection
        self.status = status

    async def _next(self):
        while (event := self._connection.next_event()) is h11.NEED_DATA:
            self._connection.receive_data(await self._reader.read(READ_BYTES))  # b"" at EOF: h11 says if early
        return event

    async def read(self) -> bytes:
        body = []
        while not isinstance(event := await self._next(), h11.EndOfMessage):
            body.append(event.data)
        return b"".join(body)

    async def events(self) -> AsyncIterator[bytes]:
        """The `data:` payload of each event, as it arrives (one llama-server chunk is usually one event)."""
        pending = b""
        while not isinstance(event := await self._next(), h11.EndOfMessage):
            *complete, pending = (pending + event.data).split(b"\n\n")
            for block in complete:
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        yield line[6:]


class EventSource:
    """POSTs to the server at a unix socket path, each on a connection of its own."""

    def __init__(self, path: str, host: str = "llama"):
        self._path = path
        self._host = host

    @asynccontextmanager
    async def post(self, target: str, body: bytes) -> AsyncIterator[EventStream]:
        """The response, once its status and headers are in; the connection closes with the block (or the task's
        cancellation)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # ours, to shut down: uvloop's stand-in cannot
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self._path)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_BYTES)
        except BaseException:
            sock.close()
            raise
        try:
            connection = h11.Connection(h11.CLIENT)
            headers = [("Host", self._host), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            writer.write(connection.send(h11.Request(method="POST", target=target, headers=headers)))
            writer.write(connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
            stream = EventStream(reader, connection, 0)
            while not isinstance(event := await stream._next(), h11.Response):
                if not isinstance(event, h11.InformationalResponse):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
            stream.status = event.status_code
            yield stream
        finally:
            # Shut the socket down at once: the server sees it even if this event loop does not turn again.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            writer.close()
