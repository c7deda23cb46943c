"""The worker's main loop: bind the data socket, start the two threads, then watch for the reasons to stop.

Shutdown is a state: running -> draining (finish in-flight, refuse new) -> stopped. Signal handlers only
set flags; a drain that outlives its grace period becomes a halt (abort everything, exit).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time

import zmq

from protocol import PROTOCOL_VERSION
from protocol.control import Hello
from protocol.launch import WorkerLaunch
from worker.backends import ModelToLoad
from worker.data_plane import DataPlane
from worker.generation_thread import GenerationThread
from worker.supervisor_link import INBOX_LIMIT, SupervisorLink

log = logging.getLogger("worker")


def _watch_lifeline(halt: threading.Event) -> None:
    """Block on stdin; EOF means the supervisor that holds the pipe's other end is gone."""
    while sys.stdin.buffer.read(4096):
        pass
    log.warning("supervisor gone (lifeline closed): exiting")
    halt.set()


def run(launch: WorkerLaunch) -> int:
    drain, halt = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: drain.set())
    signal.signal(signal.SIGINT, lambda *_: drain.set())
    if launch.exit_with_stdin:
        threading.Thread(target=_watch_lifeline, args=(halt,), name="lifeline", daemon=True).start()

    ctx = zmq.Context()
    inbox: queue.Queue = queue.Queue(maxsize=INBOX_LIMIT)
    data = DataPlane(ctx, launch.data_endpoint, launch.curve, launch.model_id)  # the generation thread's from now
    log.info("serving %s at %s%s (pid %d)", launch.model_id, data.endpoint, " (CURVE)" * data.curve, os.getpid())
    hello = Hello(
        protocol_version=PROTOCOL_VERSION,
        model_id=launch.model_id,
        instance_id=launch.instance_id,
        pid=os.getpid(),
        endpoint=data.endpoint,
    )
    link = SupervisorLink(ctx, launch.supervisor_endpoint, inbox, hello, halt)
    model = ModelToLoad(
        launch.source, launch.model_type, launch.context_length, launch.draft_source, launch.shard, launch.llama_cpp
    )
    generation = GenerationThread(
        ctx, model, launch.engine, launch.instance_id, data, inbox, drain, halt, launch.memory_charge_bytes
    )
    link.start()
    generation.start()

    deadline = None
    while generation.is_alive():
        generation.join(0.1)
        if drain.is_set() and deadline is None:
            deadline = time.monotonic() + launch.shutdown_grace
            log.info("draining (grace %.1fs)", launch.shutdown_grace)
        if (deadline is not None and time.monotonic() > deadline) or not link.is_alive():
            halt.set()
        if halt.is_set() and not generation.loaded.is_set():
            # Orphaned or stopped mid-load (minutes for a large model): go now. The loading thread still holds
            # its socket, so the context is not terminated; __main__ ends the process with os._exit.
            log.warning("stopping before the model has loaded")
            return 2 if link.refused is not None else 1
    link.closing.set()
    link.join(timeout=3)
    ctx.term()
    if link.refused is not None:
        return 2
    return 1 if generation.load_failed or generation.failed else 0
