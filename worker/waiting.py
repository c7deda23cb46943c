"""The requests an engine has accepted but not started, up to a limit: higher `priority` first, arrival order
among equals (interactive requests, priority 0, go ahead of batch lines, -1, that are still waiting, never ahead
of one that has started); and aborts for an engine that runs one request at a time."""

from __future__ import annotations

from collections import deque

from protocol.errors import ErrorCode
from protocol.generation import failure
from protocol.launch import EngineSettings
from worker.containment import failed

MAX_WAITING = EngineSettings().max_waiting


class Waiting(deque):
    def __init__(self, limit: int = MAX_WAITING):
        super().__init__()
        self.limit = limit

    def offer(self, request) -> bool:
        """Queue `request` unless the queue is full; whether it was queued."""
        if len(self) >= self.limit:
            return False
        self.append(request)
        return True

    def append(self, request) -> None:
        """Queue `request` behind every waiting request of its priority or higher."""
        priority = getattr(request, "priority", 0)
        at = len(self)
        while at > 0 and getattr(self[at - 1], "priority", 0) < priority:
            at -= 1
        self.insert(at, request)

    def drop(self, request_id: str) -> bool:
        """Remove the request with this id; whether it was waiting."""
        for request in self:
            if request.request_id == request_id:
                self.remove(request)
                return True
        return False


class OneAtATime:
    """abort / abort_all for an engine with one running request (`_running`, holding `.request`, or None) and the
    rest in `_waiting`; `_stop_running()` releases what the running one holds."""

    _running = None
    _waiting: Waiting

    def _stop_running(self) -> None:
        raise NotImplementedError

    def _start(self, request):
        """The running state for `request`; raises RequestRejected for one the engine cannot serve."""
        raise NotImplementedError

    def _has_running(self, emit) -> bool:
        """Start the next waiting request if none runs; whether one runs now. Whatever preparing a request
        raises ends that request alone (RequestRejected: the client's error; anything else: internal_error)."""
        while self._running is None and self._waiting:
            request = self._waiting.popleft()
            try:
                self._running = self._start(request)
            except Exception as exc:
                emit(failed(request, exc, "preparing the request"))
        return self._running is not None

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        if self._running is not None and self._running.request.request_id == request_id:
            self._stop_running()
            self._running = None
        elif not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        ids = [r.request_id for r in self._waiting]
        if self._running is not None:
            ids.append(self._running.request.request_id)
        for request_id in ids:
            self.abort(request_id, emit, code=code, reason=reason)
