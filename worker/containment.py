"""Containment: a failure that one request causes ends that request alone, never its batch or the worker.

mlx-lm's BatchGenerator calls each sequence's sampler and logits processors inside one batch step, so an
exception from one of them would fail the step for every sequence. Guards wrap them: a guard that catches an
exception records it and returns a harmless value (the logits unchanged, the argmax token), so the step
completes for everyone; after the step the engine fails the sequences whose guards tripped and removes them
from the batch. A failure no guard can attribute (the model's forward pass) still fails the whole batch.

`failed` turns any exception that ended a request into its error event: a RequestRejected is the client's
(its code and message go back), anything else is internal_error, with the exception text in the worker's
log under the request id and trace id, and a message that points there for the client.
"""

from __future__ import annotations

import logging
import os

import mlx.core as mx

from protocol.errors import ErrorCode
from protocol.generation import GenerationError, failure
from worker.prompt_encoding import RequestRejected

log = logging.getLogger("worker.containment")


class SamplerGuard:
    """A sampler that never raises into the batch step. Sequences with equal settings share one sampler, and
    so one guard: mlx-lm samples the batch in one call when every sequence holds the same object."""

    __slots__ = ("__weakref__", "_sampler", "error")
    during = "sampling its next token"

    def __init__(self, sampler):
        self._sampler = sampler
        self.error: BaseException | None = None

    def __call__(self, logprobs: mx.array) -> mx.array:
        try:
            tokens = self._sampler(logprobs)
            if tokens.shape != logprobs.shape[:-1]:  # caught here, not as a shape error in the batch's concat
                raise ValueError(f"the sampler returned shape {tokens.shape} for logprobs {logprobs.shape}")
            return tokens
        except Exception as exc:
            self.error = self.error or exc
            # mlx-lm compiles its samplers with MLX's global random state as input and output: one that raises
            # while traced leaves a placeholder there, and every later random draw in the process fails ("eval
            # an array without a primitive"). A fresh state mends it; seeded requests draw from their own keys.
            mx.random.seed(int.from_bytes(os.urandom(8), "little"))
            return mx.argmax(logprobs, axis=-1)


class ProcessorsGuard:
    """One sequence's logits processors as a single processor that never raises into the batch step."""

    __slots__ = ("_processors", "error")
    during = "running its logits processors"

    def __init__(self, processors: list):
        self._processors = processors
        self.error: BaseException | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        try:
            out = logits
            for processor in self._processors:
                out = processor(tokens, out)
            if out.shape != logits.shape:
                raise ValueError(f"a logits processor returned shape {out.shape} for logits {logits.shape}")
            return out
        except Exception as exc:
            self.error = self.error or exc
            return logits


def guard_processors(processors: list) -> list:
    """The processor list to hand the batch: empty stays empty (mlx-lm then skips the per-sequence path)."""
    return [ProcessorsGuard(processors)] if processors else []


def tripped(guards):
    """The first of `guards` that caught an error, or None."""
    for guard in guards:
        if guard.error is not None:
            return guard
    return None


def failed(request, exc: BaseException, during: str) -> GenerationError:
    """The error event for a request that `exc` ended while the worker was `during` (e.g. "sampling")."""
    request_id = request.request_id
    trace_id = getattr(request, "trace_id", None)
    if isinstance(exc, RequestRejected):
        log.info("request %s [x-request-id %s] refused: %s: %s", request_id, trace_id, exc.code, exc)
        return failure(request_id, exc.code, str(exc), exc.param)
    log.error(
        "request %s [x-request-id %s] failed while %s: %s: %s",
        request_id,
        trace_id,
        during,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    return internal_failure(request_id, during)


def internal_failure(request_id: str, during: str) -> GenerationError:
    """What the client learns of an internal failure: where, and where the details are; not the exception."""
    return failure(
        request_id,
        ErrorCode.INTERNAL,
        f"The worker failed while {during}; the worker log has the details under request id {request_id}.",
    )
