"""A batch's lines: read from its input file, run one at a time through the dialect that serves its URL, and
written out as OpenAI's output and error files.

An input line is `{"custom_id", "method": "POST", "url", "body"}`. A line that is not that (not JSON, no
custom_id, a custom_id seen before, a URL other than the batch's endpoint) is not run: it goes to the error file
with what is wrong with it. A line that runs is answered by the same code as the HTTP endpoint; an answer goes to
the output file, an error to the error file, each with the status code and body the endpoint would have sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

import msgspec

from gateway.core.caller import Caller
from gateway.dialects import chat, completions, embeddings, responses
from gateway.errors import APIError, openai_error_body

log = logging.getLogger("gateway.batches")
MAX_LINES = 50_000  # OpenAI's limit per batch

# The endpoints a batch may target, and the dialect function that answers one line of each (whole, no stream).
ENDPOINTS = {
    "/v1/chat/completions": chat.batch_line,
    "/v1/completions": completions.batch_line,
    "/v1/embeddings": embeddings.batch_line,
    "/v1/responses": responses.batch_line,
}


@dataclass(frozen=True)
class Line:
    index: int
    custom_id: str | None
    body: bytes | None  # None: the line is malformed
    problem: str = ""  # why it is malformed


def parse(data: bytes, endpoint: str) -> list[Line]:
    """Every non-blank line of an input file, well-formed or not, in order."""
    lines, seen = [], set()
    for index, raw in enumerate(r for r in data.splitlines() if r.strip()):
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            lines.append(Line(index, None, None, f"Line {index + 1} is not valid JSON: {exc}"))
            continue
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        problem = _problem(entry, custom_id, endpoint, seen)
        if custom_id is not None:
            seen.add(custom_id)
        body = None if problem else json.dumps(entry["body"]).encode()
        lines.append(
            Line(
                index,
                custom_id if isinstance(custom_id, str) else None,
                body,
                problem and f"Line {index + 1}: {problem}",
            )
        )
    return lines


def _problem(entry, custom_id, endpoint: str, seen: set) -> str:
    if not isinstance(entry, dict):
        return "a line must be a JSON object"
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id must be a non-empty string"
    if custom_id in seen:
        return f"the custom_id {custom_id!r} is used by an earlier line"
    if entry.get("method") != "POST":
        return "method must be POST"
    if entry.get("url") != endpoint:
        return f"url must be the batch's endpoint, {endpoint}"
    if not isinstance(entry.get("body"), dict):
        return "body must be a JSON object"
    return ""


async def run(state, caller: Caller, endpoint: str, line: Line) -> dict:
    """One line's result record: {custom_id, status_code, body} (an error's body in OpenAI's shape)."""
    record = {"custom_id": line.custom_id, "request_id": caller.trace_id}
    if line.body is None:
        return record | {"status_code": None, "error": {"code": "invalid_request", "message": line.problem}}
    try:
        body = await ENDPOINTS[endpoint](state, caller, line.body)
        return record | {"status_code": 200, "body": body}
    except APIError as exc:
        return record | {"status_code": exc.status, "body": openai_error_body(exc)}
    except Exception:  # one line's failure is that line's, never the batch's
        log.exception("batch line %s failed", caller.trace_id)
        error = APIError("internal_error", "Internal server error")
        return record | {"status_code": 500, "body": openai_error_body(error)}


def succeeded(record: dict) -> bool:
    return record.get("status_code") == 200


def output_line(record: dict) -> bytes:
    """A result as a line of the output file (an answer) or the error file (an error, a malformed line)."""
    out = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": record["custom_id"], "response": None, "error": None}
    if record.get("status_code") is None:
        out["error"] = record["error"]
    else:
        out["response"] = {
            "status_code": record["status_code"],
            "request_id": record["request_id"],
            "body": record["body"],
        }
    return msgspec.json.encode(out) + b"\n"
