"""Sessions around a chat completion: a request with `session_id` continues a stored conversation.

The session wraps the dialect at both ends. In: the session's history goes before the request's messages
(`translate`; the worker drops the oldest turns if they no longer fit). Out: once the answer is complete, the
request's messages and the answer join the session in one atomic append (`complete` for a whole answer, `around`
for a stream, where it happens before the end is rendered, so a failed store is the stream's error). A session
stores text and tool calls (session_messages.py): the answer with the calls it made, the tool results the next
request sends, and the thinking only when the request asks (`session_keeps_reasoning`). Without `session_id` a
turn reads and stores nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence

from starlette.requests import Request

from gateway.dialects.chat.schema import ChatCompletionRequest
from gateway.dialects.chat.session_messages import stored
from gateway.dialects.chat.translate import to_generate_request
from gateway.errors import APIError
from gateway.sessions import SessionStore, not_found, using_store
from protocol import ErrorCode
from protocol.generation import ChatMessage, Finished, GenerateRequest, TextChunk, ToolCall


class SessionTurn:
    def __init__(self, store: SessionStore, service: str, session_id: str | None, history: list[dict] | None):
        self._store, self._service, self.session_id = store, service, session_id
        self.history = history  # None: no session
        self._new: list[dict] = []  # what this turn adds before the answer: the request's messages
        self._keeps_reasoning = False

    @classmethod
    async def begin(cls, request: Request, req: ChatCompletionRequest) -> SessionTurn:
        """The turn of `req`, with its session's history read (404 if there is no such session)."""
        store, service = request.app.state.sessions, getattr(request.state, "service", None)
        if req.session_id is None:
            return cls(store, "", None, None)
        history = await using_store(store.messages(service.name, req.session_id))
        if history is None:
            raise not_found(req.session_id)
        request.state.affinity = f"session:{service.name}:{req.session_id}"  # its turns to one replica's cache
        return cls(store, service.name, req.session_id, history)

    def translate(self, req: ChatCompletionRequest, images: dict[int, list[bytes]]) -> GenerateRequest:
        if images and self.session_id is not None:
            raise APIError(ErrorCode.INVALID_REQUEST, "A session stores text only: send images without session_id")
        gen = to_generate_request(req, images, self.history)
        self._keeps_reasoning = req.session_keeps_reasoning
        self._new = [stored(m) for m in gen.messages[len(self.history or ()) :]]
        return gen

    async def complete(self, text: str, reasoning: str = "", tool_calls: Sequence[ToolCall] = ()) -> None:
        """The answer is complete: the request's messages and the answer (with its tool calls) join the
        session, atomically."""
        if self.session_id is None:
            return
        answer = stored(ChatMessage(role="assistant", content=text, tool_calls=list(tool_calls)))
        if reasoning and self._keeps_reasoning:
            answer["reasoning_content"] = reasoning  # kept for the reader; never sent back to the model
        turn = [*self._new, answer]
        if await using_store(self._store.append(self._service, self.session_id, turn)) is None:
            raise not_found(self.session_id)  # deleted or expired while the answer was generated

    async def around(self, events: AsyncIterable[TextChunk | Finished]) -> AsyncIterator[TextChunk | Finished]:
        """The events of a streamed answer, with the turn stored when its Finished arrives."""
        text, thought, calls = [], [], []
        async for event in events:
            if isinstance(event, Finished):
                await self.complete("".join(text), "".join(thought), calls)
            else:
                text.append(event.text)
                thought.append(event.reasoning)
                calls.extend(event.tool_calls)
            yield event
