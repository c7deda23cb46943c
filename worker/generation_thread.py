"""The one thread that owns MLX: it loads the model, then runs the engine; between two steps it reads the data
socket (worker/data_plane.py) and answers pings, and it sends what each step made as the step ends.

A ping is answered here rather than by the supervisor link, so a Pong proves the generation loop is turning.
Nothing a request carries ends this thread: the engines contain what a request causes, and what still escapes
a step or a message's handling ends the requests involved, with internal_error, while the loop goes on. Only an
engine that can serve nothing more (EngineFailed: a gguf worker's llama-server died) ends it, and the worker.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import traceback

import mlx.core as mx
import zmq

from protocol import ErrorCode, encode
from protocol.control import LoadFailed, ModelType, Ping, Pong, Ready
from protocol.generation import Abort, failure
from protocol.launch import EngineSettings
from worker.backends import Engine, EngineFailed, ModelToLoad, load_engine
from worker.data_plane import DataPlane
from worker.memory import (
    FreedMemory,
    bound_memory,
    map_large_buffers,
    mark_runtime,
    memory_report,
    weights_in_child,
)
from worker.model_loader import device_name
from worker.supervisor_link import TO_SUPERVISOR_ENDPOINT

log = logging.getLogger("worker.generation")
# Tests only (tests/test_poison_request.py): a request with this X-Request-ID makes the worker exit with an error
# as it reaches the loop, as a fault no engine contains would. No request reaches that otherwise, and the
# variable is set nowhere but in that test's server.
TEST_FAULT_TRACE = os.environ.get("MLX_WORKER_TEST_FAULT_TRACE") or None
TEST_FAULT_EXIT = 70
IDLE_WAIT_MS = 50  # idle, the data socket is waited on this long, then pings and the stop flags are seen


class GenerationThread(threading.Thread):
    def __init__(
        self,
        context: zmq.Context,
        model: ModelToLoad,
        options: EngineSettings,
        instance_id: str,
        data: DataPlane,
        inbox: queue.Queue,  # from the supervisor link: pings
        drain: threading.Event,
        halt: threading.Event,
        memory_charge: int | None = None,  # the supervisor's charge for this model: MLX's memory is bounded by it
    ):
        super().__init__(name="worker-generation", daemon=True)
        self._ctx = context
        self._model = model
        self._options = options
        self._instance_id = instance_id
        self._data = data
        self._emit = data.send  # goes out at the data plane's next flush: after the step, or the message, at hand
        self._inbox = inbox
        self._drain = drain  # finish what runs, accept nothing new
        self._halt = halt  # abort everything now
        self._memory_charge = memory_charge
        self._freed = FreedMemory()
        self.load_failed = False
        self.failed = False  # the engine failed after loading (EngineFailed): the worker exits with an error
        self.loaded = threading.Event()  # the model is loaded: from now on a halt is served by the loop

    def run(self) -> None:
        self._out = self._ctx.socket(zmq.PUSH)
        try:
            self._out.connect(TO_SUPERVISOR_ENDPOINT)
            engine = self._load()
            if engine is not None:
                if hasattr(engine, "wake_on"):  # an engine that waits in an event loop of its own (gguf)
                    engine.wake_on(self._data.fd)
                self.loaded.set()
                try:
                    self._serve(engine)
                except EngineFailed as exc:
                    log.error("the engine failed: %s", exc)
                    self.failed = True
                    engine.abort_all(self._emit, ErrorCode.WORKER_CRASHED, str(exc))
                finally:
                    if hasattr(engine, "close"):  # an engine that holds a process (gguf's llama-server)
                        engine.close()
        finally:
            self._data.close()
            self._out.close(linger=1000)

    def _load(self) -> Engine | None:
        import mlx_lm  # noqa: F401  (the engines' libraries, transformers with it: part of the runtime measured)

        map_large_buffers()  # before the weights are allocated
        mark_runtime()
        try:
            engine, loaded = load_engine(self._model, self._options)
        except Exception as exc:
            log.error("loading %s failed:\n%s", self._model.source, traceback.format_exc())
            self.load_failed = True
            message = f"{type(exc).__name__}: {exc}"
            self._to_supervisor(
                LoadFailed(instance_id=self._instance_id, code=ErrorCode.MODEL_LOAD_FAILED, message=message)
            )
            return None
        log.info("loaded %s in %.1fs", self._model.source, loaded.load_seconds)
        if self._model.model_type == ModelType.GGUF:  # llama-server holds the model: MLX has nothing to bound
            weights_in_child(loaded.weights_bytes)
        else:
            keeps_kv = self._model.model_type == ModelType.LLM  # the engine with a KV and prompt cache budget
            bound_memory(self._memory_charge, self._options.prompt_cache_bytes if keeps_kv else 0)
        self._to_supervisor(
            Ready(
                instance_id=self._instance_id,
                memory=memory_report(),
                context_length=loaded.context_length,
                load_seconds=loaded.load_seconds,
                device=getattr(loaded, "device", None) or device_name(),
                mlx_version=mx.__version__,
                compute=loaded.compute,
                vocab_size=getattr(engine, "vocab_size", None),
            )
        )
        log.info("computing with %s", loaded.compute)
        return engine

    def _serve(self, engine: Engine) -> None:
        while not (self._halt.is_set() or (self._drain.is_set() and not engine.busy)):
            # Idle: wait briefly for work. Busy: take what has arrived (waiting for it while the engine paces its
            # steps), then produce the next token.
            self._take_arrived(engine, self._pause(engine) if engine.busy else IDLE_WAIT_MS)
            if engine.busy:
                self._step(engine)
        if engine.busy:
            engine.abort_all(self._emit, ErrorCode.SHUTTING_DOWN, "the worker is shutting down")
        self._take_arrived(engine, 0)  # requests that arrived after the loop stopped still get an answer
        self._persist(engine)

    @staticmethod
    def _pause(engine: Engine) -> int:
        """Busy, how long to wait for requests before the next step: 0, unless the engine paces its steps (gguf)."""
        pause_ms = getattr(engine, "pause_ms", None)
        return pause_ms() if pause_ms is not None else 0

    def _take_arrived(self, engine: Engine, timeout_ms: int) -> None:
        for message in self._data.read(timeout_ms):
            self._handle_contained(message, engine)
        self._data.flush()  # refusals and aborts' answers
        while True:
            try:
                self._handle_contained(self._inbox.get_nowait(), engine)
            except queue.Empty:
                return

    @staticmethod
    def _persist(engine: Engine) -> None:
        """What an engine keeps beyond this process (an llm's prompt cache on disk) is written before it exits."""
        persist = getattr(engine, "persist", None)  # only engines that keep something have it
        if persist is None:
            return
        try:
            persist()
        except Exception:
            log.exception("writing what outlives the worker failed; the next worker starts without it")

    def _step(self, engine: Engine) -> None:
        try:
            engine.step(self._emit)
            self._data.flush()  # what the step made, before anything else is done
            self._freed.after_step(engine.busy)
        except EngineFailed:
            raise
        except Exception:  # a bug the engine did not contain: its state is unknown, so what it holds ends
            log.exception("engine step failed: every request in this worker ends with internal_error")
            # If even this fails, the exception ends the thread: the worker exits and the supervisor restarts it.
            engine.abort_all(
                self._emit, ErrorCode.INTERNAL, "The worker failed while generating; the worker log has the details."
            )
            self._data.flush()

    def _handle_contained(self, message, engine: Engine) -> None:
        try:
            self._handle(message, engine)
        except Exception:
            request_id = getattr(message, "request_id", None)
            log.exception("handling %s %s failed", type(message).__name__, request_id)
            if request_id is not None and not isinstance(message, Abort):
                reason = "The worker failed while accepting the request; the worker log has the details."
                self._emit(failure(request_id, ErrorCode.INTERNAL, reason))

    def _handle(self, message, engine: Engine) -> None:
        if isinstance(message, Abort):
            engine.abort(message.request_id, self._emit)
        elif isinstance(message, Ping):
            self._to_supervisor(
                Pong(
                    call_id=message.call_id,
                    instance_id=self._instance_id,
                    memory=memory_report(engine),
                    in_flight=engine.in_flight,
                    queued=engine.queued,
                )
            )
        elif TEST_FAULT_TRACE is not None and getattr(message, "trace_id", None) == TEST_FAULT_TRACE:
            log.critical("request %s carries the test fault trace: exiting", message.request_id)
            os._exit(TEST_FAULT_EXIT)
        elif self._drain.is_set() or self._halt.is_set():  # a request (generate, embed, rerank)
            self._emit(failure(message.request_id, ErrorCode.SHUTTING_DOWN, "the worker is shutting down"))
        elif not engine.submit(message):  # an engine answers a request it cannot serve with an error event
            reason = "This model's worker has as many requests waiting as it accepts; retry shortly."
            self._emit(failure(message.request_id, ErrorCode.OVERLOADED, reason))

    def _to_supervisor(self, message) -> None:
        self._out.send(encode(message))
