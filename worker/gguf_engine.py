"""The engine of a worker that serves a GGUF model (type gguf) through its private llama-server.

It is an Engine (worker/backends.py) like the MLX ones and runs on the generation thread like them, but the
decoding happens in llama-server, which batches its slots continuously. Requests wait in the engine's bounded
queue (worker/waiting.py: priority order, refused when full) until a slot is free; each admitted request is one
task on the engine's event loop: render and tokenize the prompt, check it against the context, then stream
/completion and turn its chunks into protocol events. The generation thread runs that loop itself, in step(),
until an event is ready (or EVENT_WAIT_SECONDS pass, to see the worker's inbox): a token crosses no thread
between llama-server's socket and the worker's, since every wake-up per token takes CPU from llama-server's
compute threads. For the same reason a step waits, once one stream's chunk is in, for the chunk of every other
stream of llama-server's decode step (they arrive a few milliseconds apart, one per slot), up to
COALESCE_SECONDS: eight streams then make one message to the gateway per step, not eight. Nor does the step read
each chunk as it lands: once the first is in, it leaves the sockets alone for GATHER_SECONDS (the generation thread
still takes requests and aborts) and then takes the rest in one turn of the loop. And once streams flow, steps are
at least the stream interval apart (llama_cpp.stream_interval_ms): one stream's tokens then go out a few at a time,
each wake-up carrying several; a request's first token, and its last ones, are not held. A request's failure
is its own error event (worker/containment.py). Aborting a request cancels its task, which closes its
connection; llama-server then stops the sequence and frees its slot. Each request names its slot, packed low
(worker/llama_slots.py: a decode step costs the span of its slots). A dead llama-server is EngineFailed: the
worker exits and the supervisor starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvloop
from mlx_lm.tool_parsers import json_tools

from protocol.errors import ErrorCode
from protocol.generation import Finished, FinishReason, GenerateRequest, TextChunk, Usage, failure
from protocol.launch import EngineSettings, LlamaCppSettings, refuse_mlx_only_settings
from worker.backends import EngineFailed
from worker.containment import failed
from worker.llama_server import LlamaServer, build_backend
from worker.llama_slots import Slots
from worker.llama_stream import StreamTranslator, completion_body, decode_chunk
from worker.llama_template import LlamaTemplate, TemplateError, error_message
from worker.prompt_encoding import RequestRejected, encode_prompt, max_tokens_for
from worker.sampling import check_sampling
from worker.sse_client import ERRORS, EventSource
from worker.tool_calls import ToolCallScanner, openai_tools, parser_for
from worker.waiting import MAX_WAITING, Waiting

log = logging.getLogger("worker.gguf")
SERVER_EXIT_SECONDS = 1.0  # a stream broken by llama-server's end: how long its exit may take to be seen
EVENT_WAIT_SECONDS = 0.05  # step() runs the event loop this long at most without an event, then sees the inbox
COALESCE_SECONDS = 0.015  # after a step's first event, how long it waits for the other streams' chunks
GATHER_SECONDS = 0.005  # after a step's first chunk, how long the others are left to land (most do within 5 ms)
GROUP_SECONDS = 0.1  # how long a rendered prompt waits for the others being rendered, to be prefilled with them


@dataclass
class LoadedGGUF:
    server: LlamaServer
    template: LlamaTemplate
    context_length: int  # per slot
    slots: int  # sequences llama-server decodes together
    vocab_size: int | None
    weights_bytes: int  # the GGUF files llama-server maps (the model's and the draft's)
    load_seconds: float
    stream_interval_ms: int  # llama_cpp.stream_interval_ms: how often a flowing stream's tokens go out
    compute: str
    device: str


def load_gguf(
    source: str, context_length: int | None, draft: str | None, llama: LlamaCppSettings, engine: EngineSettings
) -> LoadedGGUF:
    started = time.perf_counter()
    refuse_mlx_only_settings(engine)  # a standalone worker's flags: the supervisor's config refuses them sooner
    for path in (source, draft):
        if path is not None and not (Path(path).is_file() and path.endswith(".gguf")):
            raise FileNotFoundError(f"{path!r} is not a .gguf file")
    trained, vocab_size = gguf_metadata(source)
    context = context_length or trained
    server = LlamaServer(source, context, llama, engine, draft)
    try:
        props = server.wait_ready()
    except BaseException:
        server.close()
        raise
    backend = build_backend()
    slots = int(props.get("total_slots", llama.parallel))
    compute = f"llama.cpp {backend}, {slots} slots" + (f", draft {Path(draft).name}" if draft else "")
    return LoadedGGUF(
        server=server,
        template=LlamaTemplate(server.client, props.get("chat_template") or None),
        context_length=int(props.get("default_generation_settings", {}).get("n_ctx", context)),
        slots=slots,
        vocab_size=vocab_size,
        weights_bytes=sum(Path(path).stat().st_size for path in (source, draft) if path is not None),
        load_seconds=time.perf_counter() - started,
        compute=compute,
        stream_interval_ms=llama.stream_interval_ms,
        device="cpu" if backend == "cpu" else "gpu",
    )


def gguf_metadata(path: str) -> tuple[int, int | None]:
    """(the context the model was trained for, its vocabulary size) from the GGUF's metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    context = fields.get(f"{arch}.context_length")
    tokens = fields.get("tokenizer.ggml.tokens")
    return (int(context.contents()) if context is not None else 4096), (len(tokens.data) if tokens else None)


@dataclass
class _Live:
    task: asyncio.Task
    started: bool = False  # its first chunk went out
    left: int | None = None  # chunks it may still get (max_tokens less those in), once sent to llama-server
    pending: int = 0  # chunks in since its events last went out
    burst: int = 0  # the most chunks one of its steps carried: about what a held step brings


class GGUFEngine:
    def __init__(self, loaded: LoadedGGUF, max_waiting: int = MAX_WAITING):
        self._server = loaded.server
        self._template = loaded.template
        self._slots = loaded.slots
        self._slot_ids = Slots(loaded.slots)  # which slot each request takes: packed low (worker/llama_slots.py)
        self.vocab_size = loaded.vocab_size  # the worker's Ready carries it: top_k is checked at the edge
        self.context_length = loaded.context_length
        self._waiting = Waiting(max_waiting)  # accepted, not yet handed to llama-server
        self._events: list = []  # from the tasks, for step()
        self._live: dict[str, _Live] = {}  # handed to llama-server: at most one per slot
        self._loop = uvloop.new_event_loop()  # run by the generation thread, in step() (and abort())
        self._stepping = False  # step() runs the loop: an event stops it
        self._stop_asked = False  # the running step's stop() is called
        self._streaming: set[str] = set()  # requests whose chunks are flowing: one per llama.cpp decode step
        self._arrived: set[str] = set()  # those whose chunk came in this step
        self._deadline: asyncio.TimerHandle | None = None  # when the running step stops waiting
        self._rendering: set[asyncio.Future] = set()  # prompts being rendered and tokenized: each done when it is
        self._http = EventSource(self._server.socket)
        self._interval = loaded.stream_interval_ms / 1000
        self._emitted_at = 0.0  # when the last step's events went out
        self._gathered = False  # the step's first chunks are in and the others were given GATHER_SECONDS
        self._first_at = 0.0  # when the step's first event was put

    @property
    def in_flight(self) -> int:
        return sum(1 for live in self._live.values() if live.started)

    @property
    def queued(self) -> int:
        return len(self._waiting) + len(self._live) - self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self._live or self._waiting)

    def pause_ms(self) -> int:
        """How long the generation thread leaves llama-server's sockets unread before the next step, waiting on the
        data socket alone: a chunk that lands meanwhile costs no wake-up, and the next step takes all that landed."""
        if self._events:  # a step's first chunks: the rest of llama.cpp's decode step is on its way
            until = self._first_at + GATHER_SECONDS
        elif self._interval and self._holdable():
            until = self._emitted_at + self._interval
        else:
            return 0
        return max(0, math.ceil((until - time.monotonic()) * 1000))

    def _holdable(self) -> bool:
        """Every request handed to llama-server has had its first token and is not near its last (max_tokens: held,
        its last would be late by up to the interval), and none waits for a free slot."""
        if self._waiting and len(self._live) < self._slots:
            return False
        return bool(self._live) and all(
            live.started and live.left is not None and live.left > live.burst for live in self._live.values()
        )

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0  # llama-server's KV and prompt caches are in its resident set, which the report includes

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def wake_on(self, fd: int) -> None:
        """A descriptor that signals work for the generation thread (the data socket's): step() stops waiting when
        it does, so a request or an abort that arrives mid-step is taken at once, not after EVENT_WAIT_SECONDS."""
        self._loop.add_reader(fd, self._stop_step)

    def _stop_step(self) -> None:
        """End the running step after this turn of the loop. Once per step: uvloop's stop() queues a callback, and
        a second one left queued would end the next run of the loop (an abort's included) at its first turn."""
        if self._stepping and not self._stop_asked:
            self._stop_asked = True
            self._loop.stop()

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        live = self._live.pop(request_id, None)
        if live is not None:
            self._cancel(live.task)
        elif not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        for request_id in [*self._live, *(r.request_id for r in self._waiting)]:
            self.abort(request_id, emit, code=code, reason=reason)

    def _cancel(self, task: asyncio.Task) -> None:
        """Cancel a request's task and run the loop until it has ended: its connection is closed before this returns,
        so llama-server stops the sequence and frees the slot even if no step() follows."""
        task.cancel()
        with contextlib.suppress(BaseException):
            self._loop.run_until_complete(task)

    def step(self, emit) -> None:
        """Hand waiting requests to free slots, then over what the tasks produced (running the loop until some)."""
        if self._waiting:
            self._check_server()  # before a request goes to it
        while self._waiting and len(self._live) < self._slots:
            request = self._waiting.popleft()
            self._live[request.request_id] = _Live(self._loop.create_task(self._serve(request)))
        if not self._events or not self._all_arrived():
            # Events put while an abort ran the loop wait for the others' chunks no longer than any.
            wait = self._first_at + COALESCE_SECONDS - time.monotonic() if self._events else EVENT_WAIT_SECONDS
            self._deadline = self._loop.call_later(max(0.0, wait), self._stop_step)
            self._stepping, self._stop_asked = True, False
            try:
                self._loop.run_forever()  # until every stream's chunk is in, the first is (see _put), or the deadline
            finally:
                self._stepping = False
                self._deadline.cancel()
            if self._events and not self._gathered and not self._all_arrived():
                self._gathered = True
                return  # the generation thread waits pause_ms() for the data socket alone, then steps again
        events, self._events = self._events, []
        self._arrived.clear()
        self._gathered = False
        if events:
            self._emitted_at = time.monotonic()
        for live in self._live.values():
            live.burst, live.pending = max(live.burst, live.pending), 0
        for event in events:
            live = self._live.get(event.request_id)
            if live is None:  # aborted: it already had its answer
                continue
            live.started = live.started or isinstance(event, TextChunk)
            if not isinstance(event, TextChunk):
                del self._live[event.request_id]
            emit(event)
        self._check_server()  # now, not at the next request, which would be taken for the crash's cause

    def _check_server(self) -> None:
        if not self._server.alive:
            raise EngineFailed(f"llama-server exited (exit code {self._server.proc.returncode})")

    def close(self) -> None:
        for live in self._live.values():
            self._cancel(live.task)
        self._server.close()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())  # the streams' generators, finalized
        self._loop.close()

    # -- on the event loop, as step() runs it -------------------------------------------------------------------

    def _put(self, event) -> None:
        self._events.append(event)
        if len(self._events) == 1:
            self._first_at = time.monotonic()  # the others' chunks get COALESCE_SECONDS from now
        if self._all_arrived() or not self._gathered:
            self._stop_step()  # after this turn of the loop: the events of every chunk ready now go out together

    def _chunk_in(self, request_id: str) -> None:
        if (live := self._live.get(request_id)) is not None and live.left is not None:
            live.left -= 1
            live.pending += 1
        self._streaming.add(request_id)
        self._arrived.add(request_id)
        self._check_arrived()

    def _all_arrived(self) -> bool:
        return self._streaming <= self._arrived

    def _check_arrived(self) -> None:
        if self._events and self._all_arrived():
            self._stop_step()

    async def _serve(self, request) -> None:
        try:
            await self._generate(request)
        except asyncio.CancelledError:
            raise
        except ERRORS as exc:  # llama-server went away mid-request: step() sees it exited, once it has
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._server.proc.wait, SERVER_EXIT_SECONDS)
            self._put(failure(request.request_id, ErrorCode.WORKER_CRASHED, f"llama-server: {exc!r}"))
        except Exception as exc:  # this request's failure (RequestRejected: the client's) ends this request alone
            self._put(failed(request, exc, "generating with llama.cpp"))
        finally:
            self._streaming.discard(request.request_id)  # no more chunks: a step does not wait for it
            self._check_arrived()

    async def _generate(self, request) -> None:
        prompt, prefix, schema = await self._render(request)
        rid = request.request_id
        if request.count_only:
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=0)
            self._put(Finished(request_id=rid, finish_reason=FinishReason.STOP, usage=usage))
            return
        max_tokens = max_tokens_for(request, len(prompt), self.context_length)
        scanner = ToolCallScanner(self._template, request.tools) if _offers_tools(request) else None
        translator = StreamTranslator(request, len(prompt), scanner, prefix)
        body = completion_body(request, prompt, max_tokens, schema)
        if (live := self._live.get(rid)) is not None:
            live.left = max_tokens
        await self._with_the_others()
        body["id_slot"] = slot = self._slot_ids.take(prompt)
        try:
            await self._complete(rid, translator, msgspec.json.encode(body))
        finally:
            self._slot_ids.release(slot)

    async def _complete(self, rid: str, translator: StreamTranslator, body: bytes) -> None:
        async with self._http.post("/completion", body) as response:
            if response.status != 200:
                message = error_message(await response.read())
                code = ErrorCode.INVALID_REQUEST if response.status == 400 else ErrorCode.INTERNAL
                self._put(failure(rid, code, f"llama.cpp: {message}"))
                return
            async for payload in response.events():
                self._chunk_in(rid)
                data = decode_chunk(payload)
                if data.error is not None:
                    self._put(failure(rid, ErrorCode.INTERNAL, f"llama.cpp: {error_message(payload)}"))
                    return
                for event in translator.feed(data):
                    self._put(event)
                if data.stop:
                    return
        self._put(failure(rid, ErrorCode.WORKER_CRASHED, "llama-server ended the stream early"))

    async def _render(self, request) -> tuple[list[int], str, dict | None]:
        rendered = self._loop.create_future()
        self._rendering.add(rendered)
        try:
            return await asyncio.to_thread(self._prompt, request)  # two calls to llama-server: off the loop
        finally:
            self._rendering.discard(rendered)
            rendered.set_result(None)

    async def _with_the_others(self) -> None:
        """Wait, up to GROUP_SECONDS, for the prompts being rendered now: requests that arrive together then reach
        llama-server together and are prefilled in one batch. Sent as each is ready, the first would be prefilled
        alone and the rest one prefill later. Prompts that start rendering later are not waited for."""
        if self._rendering:
            await asyncio.wait(set(self._rendering), timeout=GROUP_SECONDS)

    def _prompt(self, request) -> tuple[list[int], str, dict | None]:
        """(prompt tokens, text already in the prompt of the answer, JSON schema the answer must follow)."""
        try:
            prompt = encode_prompt(self._template, request, self.context_length)
            check_sampling(request.sampling, self.vocab_size)
        except TemplateError as exc:
            raise RequestRejected(ErrorCode.INVALID_REQUEST, f"llama.cpp refused the prompt: {exc}") from exc
        if request.json_schema is not None:
            return prompt, "", request.json_schema
        choice = request.tool_choice
        json_tools_format = parser_for(self._template)[2] is json_tools.parse_tool_call
        if _offers_tools(request) and choice.mode == "required" and json_tools_format:
            # A required call, enforced in the json_tools format: the prompt opens the call, and llama.cpp's
            # grammar holds the rest to {"name": <a tool>, "arguments": <its parameters>}.
            marker = f"{json_tools.tool_call_start}\n"
            return prompt + self._template.encode_continuation(marker), marker, _call_schema(request, choice.name)
        return prompt, "", None


def _offers_tools(request: GenerateRequest) -> bool:
    return bool(request.tools) and request.tool_choice.mode != "none"


def _call_schema(request: GenerateRequest, name: str | None) -> dict:
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": t["function"]["parameters"] or {}},
            "required": ["name", "arguments"],
        }
        for t in openai_tools(request.tools)
        if name is None or t["function"]["name"] == name
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}
