"""OpenAI Chat Completions answers: whole (`chat.completion`) and streamed (`chat.completion.chunk` events)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from gateway.core.generation import Answer
from gateway.dialects.openai_common import DONE, usage
from gateway.sse import sse
from protocol.generation import Finished, TextChunk, TokenLogprob, ToolCall


def completion(answer: Answer, base: dict, logprobs: bool, reasoning_keys: tuple[str, ...]) -> dict:
    """The whole answer; `base` holds the id, created and system_fingerprint; a reasoning model's thinking goes
    under each of `reasoning_keys`."""
    message = {"role": "assistant", "content": answer.text or (None if answer.tool_calls else "")}
    if answer.reasoning:
        message |= dict.fromkeys(reasoning_keys, answer.reasoning)
    if answer.tool_calls:
        message["tool_calls"] = [_tool_call(c) for c in answer.tool_calls]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": _logprobs(answer.logprobs if logprobs else None),
        "finish_reason": answer.end.finish_reason,
    }
    body = base | {"model": answer.model_id, "object": "chat.completion", "choices": [choice]}
    return body | {"usage": usage(answer.end)}


async def chunks(
    events: AsyncIterable[TextChunk | Finished], base: dict, include_usage: bool, reasoning_keys: tuple[str, ...]
) -> AsyncIterator[bytes]:
    """The streamed answer: a role chunk, thinking, content and tool-call deltas, the finish chunk, usage if asked,
    [DONE]."""

    def chunk(delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        body = base | {"object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    calls = 0
    async for event in events:
        if isinstance(event, Finished):
            yield chunk({}, event.finish_reason)
            if include_usage:
                yield sse(base | {"object": "chat.completion.chunk", "choices": [], "usage": usage(event)})
            yield DONE
            return
        content = event.text or not (event.tool_calls or event.reasoning)  # an empty chunk still carries logprobs
        if event.reasoning:
            yield chunk(
                dict.fromkeys(reasoning_keys, event.reasoning), logprobs=None if content else _logprobs(event.logprobs)
            )
        if content:
            yield chunk({"content": event.text}, logprobs=_logprobs(event.logprobs))
        if event.tool_calls:
            yield chunk({"tool_calls": [_tool_call(c, calls + i) for i, c in enumerate(event.tool_calls)]})
            calls += len(event.tool_calls)


def _tool_call(call: ToolCall, index: int | None = None) -> dict:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index} | out


def _logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's choice.logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    if entries is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            entry(e.token, e.logprob) | {"top_logprobs": [entry(t.token, t.logprob) for t in e.top_logprobs]}
            for e in entries
        ]
    }
