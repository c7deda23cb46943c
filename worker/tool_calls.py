"""Tool calls in generated text: the model's own markers and parser (mlx-lm's tool_parsers), or the json_tools
format (<tool_call>{"name": ..., "arguments": {...}}</tool_call>) for models whose template has no tool support.

Text outside the markers streams on as content; text between them is held until the end marker and parsed
into calls. Text that may be the start of a marker is held back, so no client sees half a marker.
"""

from __future__ import annotations

import json
import logging
import uuid

from mlx_lm.tool_parsers import json_tools

from protocol.generation import ToolCall, ToolSpec
from worker.stop_matcher import partial_suffix

log = logging.getLogger("worker.tools")


def openai_tools(tools: list[ToolSpec]) -> list[dict]:
    """Tools in the shape chat templates and mlx-lm's parsers expect."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


def parser_for(tokenizer):
    """(start marker, end marker, parse function) for this model's tool calls."""
    if tokenizer.has_tool_calling:
        return tokenizer.tool_call_start, tokenizer.tool_call_end, tokenizer.tool_parser
    return json_tools.tool_call_start, json_tools.tool_call_end, json_tools.parse_tool_call


class ToolCallScanner:
    def __init__(self, tokenizer, tools: list[ToolSpec]):
        self._start, self._end, self._parse = parser_for(tokenizer)
        self._tools = openai_tools(tools)
        self._pending = ""  # text not yet released: a possible marker start, or a call in progress
        self._in_call = False
        self.made_calls = False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add generated text; return the content now safe to send and the calls completed by it."""
        self._pending += text
        out, calls = [], []
        while True:
            if self._in_call:
                end = self._pending.find(self._end) if self._end else -1
                if end < 0:
                    break
                calls += self._parsed(self._pending[:end])
                self._pending = self._pending[end + len(self._end) :]
                self._in_call = False
            else:
                start = self._pending.find(self._start)
                if start < 0:
                    keep = partial_suffix(self._pending, [self._start])
                    out.append(self._pending[: len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep :]
                    break
                out.append(self._pending[:start])
                self._pending = self._pending[start + len(self._start) :]
                self._in_call = True
        return "".join(out), calls

    def flush(self) -> tuple[str, list[ToolCall]]:
        """The end of generation: a call without its end marker (markers some parsers do without) is parsed
        if it can be; otherwise it is content."""
        pending, self._pending = self._pending, ""
        if not self._in_call:
            return pending, []
        calls = self._parsed(pending)
        return ("" if calls else self._start + pending), calls

    def _parsed(self, text: str) -> list[ToolCall]:
        try:
            parsed = self._parse(text, self._tools)
        except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("could not parse a tool call (%s): %r", exc, text[:200])
            return []
        calls = []
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(call, dict) or "name" not in call:
                continue
            args = call.get("arguments", {})
            calls.append(
                ToolCall(
                    id=call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    name=str(call["name"]),
                    arguments=args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                )
            )
        self.made_calls = self.made_calls or bool(calls)
        return calls


def scan(scanner: ToolCallScanner | None, text: str, done: bool) -> tuple[str, list[ToolCall]]:
    """Generated text through a request's scanner (None: it offered no tools); at the end, what it held too."""
    if scanner is None:
        return text, []
    text, calls = scanner.feed(text)
    if done:
        rest, more = scanner.flush()
        text, calls = text + rest, calls + more
    return text, calls
