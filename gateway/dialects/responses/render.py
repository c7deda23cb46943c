"""OpenAI Responses answers, whole and streamed, from one builder.

`ResponseBuilder` turns a generation's events into output items (a reasoning item for the thinking, a message
for the answer, a function_call per tool call, in the order the model produced them) and, as it goes, into the
Responses event sequence the openai SDK's `responses.stream` assembles:

    response.created, response.in_progress,
    per item: response.output_item.added, [response.content_part.added,
              response.reasoning_text.delta* | response.output_text.delta* | response.function_call_arguments.delta,
              response.reasoning_text.done | response.output_text.done | response.function_call_arguments.done,
              response.content_part.done], response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it short)

every event with its `sequence_number`, and `output_index`, `item_id`, `content_index` where they belong. A whole
answer is the same builder's final response, its events unsent. An error after the 200 is an `error` event and
`response.failed`, preceded by `response.created` when nothing was sent yet (the SDK needs that first).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec

from gateway.core.generation import Answer, Generation
from gateway.dialects.responses.translate import new_id
from gateway.errors import APIError
from gateway.sse import sse_event
from protocol.generation import Finished, TextChunk, ToolCall


def usage(end: Finished) -> dict:
    u = end.usage
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


class ResponseBuilder:
    def __init__(self, base: dict):
        """`base`: the response's fields known before it starts (id, model, instructions, tools, ...)."""
        self.base = base
        self.output: list[dict] = []
        self._sequence = 0
        self._started = False
        self._open: dict | None = None  # the reasoning item or message taking deltas
        self._parts: list[str] = []  # its text so far

    def _event(self, kind: str, **payload) -> bytes:
        self._sequence += 1
        return sse_event(kind, payload | {"sequence_number": self._sequence - 1})

    def response(self, status: str, end: Finished | None = None, error: APIError | None = None) -> dict:
        body = self.base | {"status": status, "output": list(self.output), "usage": usage(end) if end else None}
        if end is not None and end.finish_reason == "length":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        if error is not None:
            body["error"] = {"code": error.code, "message": error.message}
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        return body

    def start(self) -> list[bytes]:
        self._started = True
        opening = self.response("in_progress")
        return [
            self._event("response.created", response=opening),
            self._event("response.in_progress", response=opening),
        ]

    def chunk(self, event: TextChunk) -> list[bytes]:
        out = []
        if event.reasoning:
            out += self._delta("reasoning", event.reasoning)
        if event.text:
            out += self._delta("message", event.text)
        for call in event.tool_calls:
            out += self._close() + self._call(call)
        return out

    def end(self, end: Finished) -> tuple[list[bytes], dict]:
        """The closing events and the final response."""
        status = "incomplete" if end.finish_reason == "length" else "completed"
        out = self._close(status)
        final = self.response(status, end)
        return [*out, self._event(f"response.{status}", response=final)], final

    def fail(self, error: APIError) -> bytes:
        """The stream's end on an error after the 200."""
        out = [] if self._started else self.start()
        out += [self._event("error", code=error.code, message=error.message, param=error.param)]
        out += [self._event("response.failed", response=self.response("failed", error=error))]
        return b"".join(out)

    def _delta(self, kind: str, text: str) -> list[bytes]:
        out = []
        if self._open is None or self._open["type"] != kind:
            out += self._close()
            out += self._open_item(kind)
        self._parts.append(text)
        where = {"item_id": self._open["id"], "output_index": len(self.output), "content_index": 0}
        if kind == "reasoning":
            return [*out, self._event("response.reasoning_text.delta", delta=text, **where)]
        return [*out, self._event("response.output_text.delta", delta=text, logprobs=[], **where)]

    def _open_item(self, kind: str) -> list[bytes]:
        if kind == "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._open, self._parts = item, []
        where = {"output_index": len(self.output)}
        return [
            self._event("response.output_item.added", item=item, **where),
            self._event("response.content_part.added", item_id=item["id"], content_index=0, part=part, **where),
        ]

    def _close(self, status: str = "completed") -> list[bytes]:
        if self._open is None:
            return []
        item, text = self._open, "".join(self._parts)
        where = {"item_id": item["id"], "output_index": len(self.output), "content_index": 0}
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            out = [self._event("response.reasoning_text.done", text=text, **where)]
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out = [self._event("response.output_text.done", text=text, logprobs=[], **where)]
        out.append(self._event("response.content_part.done", part=part, **where))
        done = item | {"content": [part], "status": status}
        out.append(self._event("response.output_item.done", item=done, output_index=len(self.output)))
        self.output.append(done)
        self._open = None
        return out

    def _call(self, call: ToolCall) -> list[bytes]:
        item = {"id": new_id("fc"), "type": "function_call", "call_id": call.id, "name": call.name}
        index = len(self.output)
        where = {"item_id": item["id"], "output_index": index}
        out = [
            self._event(
                "response.output_item.added", item=item | {"arguments": "", "status": "in_progress"}, output_index=index
            ),
            self._event("response.function_call_arguments.delta", delta=call.arguments, **where),
            self._event("response.function_call_arguments.done", arguments=call.arguments, name=call.name, **where),
        ]
        done = item | {"arguments": call.arguments, "status": "completed"}
        out.append(self._event("response.output_item.done", item=done, output_index=index))
        self.output.append(done)
        return out

    def whole(self, answer: Answer) -> dict:
        """The final response of a whole (non-streamed) answer: thinking, answer, then calls."""
        chunk = TextChunk(request_id="", text=answer.text, reasoning=answer.reasoning, completion_tokens=0)
        self.chunk(msgspec.structs.replace(chunk, tool_calls=answer.tool_calls))
        return self.end(answer.end)[1]

    async def events(self, generation: Generation, on_end) -> AsyncIterator[bytes]:
        """The streamed answer; `on_end(final response)` is awaited before the last event (the store's write:
        if it fails, the stream ends with its error instead)."""
        for chunk in self.start():
            yield chunk
        async for event in generation:
            if isinstance(event, Finished):
                closing, final = self.end(event)
                await on_end(final)
                for chunk in closing:
                    yield chunk
                return
            for chunk in self.chunk(event):
                yield chunk
