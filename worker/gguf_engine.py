"""The engine of a worker that serves a GGUF model (type gguf) through its private llama-server.

It is an Engine (worker/backends.py) like the MLX ones and runs on the generation thread like them, but the
decoding happens in llama-server, which batches its slots continuously. Requests wait in the engine's bounded
queue (worker/waiting.py: priority order, refused when full) until a slot is free; each admitted request is one
coroutine on the engine's own event loop thread: render and tokenize the prompt, check it against the context,
then stream /completion and turn its chunks into protocol events on a queue that step() hands to the worker's
socket. A request's failure is its own error event (worker/containment.py). Aborting a request cancels its
coroutine, which closes its HTTP stream; llama-server then stops the sequence and frees its slot. A dead
llama-server is EngineFailed: the worker exits and the supervisor starts another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from mlx_lm.tool_parsers import json_tools

from protocol.errors import ErrorCode
from protocol.generation import Finished, FinishReason, GenerateRequest, TextChunk, Usage, failure
from protocol.launch import EngineSettings, LlamaCppSettings, refuse_mlx_only_settings
from worker.backends import EngineFailed
from worker.containment import failed
from worker.llama_server import LlamaServer, build_backend
from worker.llama_stream import StreamTranslator, completion_body
from worker.llama_template import LlamaTemplate, TemplateError, error_message
from worker.prompt_encoding import RequestRejected, encode_prompt, max_tokens_for
from worker.sampling import check_sampling
from worker.tool_calls import ToolCallScanner, openai_tools, parser_for
from worker.waiting import MAX_WAITING, Waiting

log = logging.getLogger("worker.gguf")
EVENT_WAIT_SECONDS = 0.02  # step() waits this long for llama-server's next token before the worker's inbox


@dataclass
class LoadedGGUF:
    server: LlamaServer
    template: LlamaTemplate
    context_length: int  # per slot
    slots: int  # sequences llama-server decodes together
    vocab_size: int | None
    weights_bytes: int  # the GGUF files llama-server maps (the model's and the draft's)
    load_seconds: float
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
    future: object  # the coroutine's concurrent.futures.Future
    started: bool = False  # its first chunk went out


class GGUFEngine:
    def __init__(self, loaded: LoadedGGUF, max_waiting: int = MAX_WAITING):
        self._server = loaded.server
        self._template = loaded.template
        self._slots = loaded.slots
        self.vocab_size = loaded.vocab_size  # the worker's Ready carries it: top_k is checked at the edge
        self.context_length = loaded.context_length
        self._waiting = Waiting(max_waiting)  # accepted, not yet handed to llama-server
        self._events: queue.Queue = queue.Queue()  # from the coroutines, for step()
        self._live: dict[str, _Live] = {}  # handed to llama-server: at most one per slot
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="worker-llama-http", daemon=True).start()
        self._http: httpx.AsyncClient = asyncio.run_coroutine_threadsafe(self._client(), self._loop).result()

    async def _client(self) -> httpx.AsyncClient:
        return self._server.async_client()

    @property
    def in_flight(self) -> int:
        return sum(1 for live in self._live.values() if live.started)

    @property
    def queued(self) -> int:
        return len(self._waiting) + len(self._live) - self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self._live or self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0  # llama-server's KV and prompt caches are in its resident set, which the report includes

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        live = self._live.pop(request_id, None)
        if live is not None:
            live.future.cancel()  # closes its HTTP stream: llama-server stops the sequence and frees the slot
        elif not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        for request_id in [*self._live, *(r.request_id for r in self._waiting)]:
            self.abort(request_id, emit, code=code, reason=reason)

    def step(self, emit) -> None:
        """Hand waiting requests to free slots, then over what the coroutines produced (waiting briefly for it)."""
        if not self._server.alive:
            raise EngineFailed(f"llama-server exited (exit code {self._server.proc.returncode})")
        while self._waiting and len(self._live) < self._slots:
            request = self._waiting.popleft()
            future = asyncio.run_coroutine_threadsafe(self._serve(request), self._loop)
            self._live[request.request_id] = _Live(future)
        try:
            events = [self._events.get(timeout=EVENT_WAIT_SECONDS)]
        except queue.Empty:
            return
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            live = self._live.get(event.request_id)
            if live is None:  # aborted: it already had its answer
                continue
            live.started = live.started or isinstance(event, TextChunk)
            if not isinstance(event, TextChunk):
                del self._live[event.request_id]
            emit(event)

    def close(self) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- on the event loop thread ------------------------------------------------------------------------------

    async def _serve(self, request) -> None:
        try:
            await self._generate(request)
        except asyncio.CancelledError:
            raise
        except httpx.TransportError as exc:  # llama-server went away mid-request; step() will see it exited
            self._events.put(failure(request.request_id, ErrorCode.WORKER_CRASHED, f"llama-server: {exc!r}"))
        except Exception as exc:  # this request's failure (RequestRejected: the client's) ends this request alone
            self._events.put(failed(request, exc, "generating with llama.cpp"))

    async def _generate(self, request) -> None:
        prompt, prefix, schema = await asyncio.to_thread(self._prompt, request)
        rid = request.request_id
        if request.count_only:
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=0)
            self._events.put(Finished(request_id=rid, finish_reason=FinishReason.STOP, usage=usage))
            return
        max_tokens = max_tokens_for(request, len(prompt), self.context_length)
        scanner = ToolCallScanner(self._template, request.tools) if _offers_tools(request) else None
        translator = StreamTranslator(request, len(prompt), scanner, prefix)
        body = completion_body(request, prompt, max_tokens, schema)
        async with self._http.stream("POST", "/completion", json=body) as response:
            if response.status_code != 200:
                message = error_message(await response.aread())
                code = ErrorCode.INVALID_REQUEST if response.status_code == 400 else ErrorCode.INTERNAL
                self._events.put(failure(rid, code, f"llama.cpp: {message}"))
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = json.loads(line.removeprefix("data: "))
                if "error" in data:
                    self._events.put(failure(rid, ErrorCode.INTERNAL, f"llama.cpp: {error_message(line[6:].encode())}"))
                    return
                for event in translator.feed(data):
                    self._events.put(event)
                if data.get("stop"):
                    return
        self._events.put(failure(rid, ErrorCode.WORKER_CRASHED, "llama-server ended the stream early"))

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
