"""EnsureLoaded, sent by gateways: where does a model live? Loads it first if it must (one load serves every
caller waiting for it). No CLI part: `ctl load` is the operator's way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import EnsureLoaded, Located
from protocol.generation import SamplingDefaults

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor
    from supervisor.worker_process import WorkerProcess

REQUEST = EnsureLoaded


async def execute(supervisor: Supervisor, call: EnsureLoaded) -> Located:
    """A request's model, by the name it gave (the fallback model for an unknown one, where configured), with the
    sampling defaults for it and the preset the request selected (checked before anything loads), and whether the
    worker the caller found gone crashed by a fault of its own."""
    config = supervisor.fleet.config
    if call.preset:
        config.preset(call.preset)  # an unknown one fails here, before a load
    found = await supervisor.fleet.ensure_loaded(
        call.model, stale_instance=call.stale_instance, allowed=call.allowed, fallback=True
    )
    defaults = config.defaults_for(found[0].model_id, call.preset)
    return located(call, *found, defaults=defaults, stale_faulted=call.stale_instance in supervisor.fleet.faulted)


def located(
    call,
    worker: WorkerProcess,
    evicted: list[str],
    defaults: SamplingDefaults | None = None,
    stale_faulted: bool = False,
) -> Located:
    """The reply to a call that got a model served: where its worker is, what was evicted to load it, and whether
    the worker the caller found gone crashed by a fault of its own."""
    return Located(
        call_id=call.call_id,
        model_id=worker.model_id,
        endpoint=worker.endpoint,
        instance_id=worker.instance_id,
        evicted=evicted,
        defaults=defaults or SamplingDefaults(),
        stale_faulted=stale_faulted,
        vocab_size=worker.vocab_size,
    )
