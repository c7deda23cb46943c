"""Sampling defaults and presets: what fills the fields a request leaves unset.

The config's `defaults:` (global and per model) and named `presets:` belong to the supervisor, which resolves model
names: its answer to EnsureLoaded carries the defaults for the model that will answer, with the preset the
request selected over them. A dialect's translation says what the request set itself (`Asked`: its own values
of those fields, the preset it named, and the dialect's own built-in values, such as 16 tokens for legacy
completions). `settle` is the one function that fills the rest, for every dialect, once the model is known and
before the request goes to its worker: the request's own field wins, then the defaults, then the built-in value.
The effective parameters are logged with the request id.
"""

from __future__ import annotations

import logging

import msgspec

from protocol.generation import ChatMessage, GenerateRequest, Role, SamplingDefaults

log = logging.getLogger("gateway.sampling")

SYSTEM_ROLES = (Role.SYSTEM, Role.DEVELOPER)


class Asked(msgspec.Struct, frozen=True, kw_only=True):
    """What a request set itself of the fields the server may default, and the preset it selected."""

    own: SamplingDefaults = SamplingDefaults()
    preset: str | None = None
    builtin: SamplingDefaults = SamplingDefaults()  # the dialect's values where neither request nor config says


def settle(request: GenerateRequest, asked: Asked, defaults: SamplingDefaults, model_id: str) -> GenerateRequest:
    """`request` with the fields it left unset filled: its own, then `defaults`, then the built-in values. A default
    system prompt goes first in a chat that brings no system message."""
    chosen = asked.own.over(defaults).over(asked.builtin)
    fields = {k: v for k, v in msgspec.structs.asdict(chosen).items() if v is not None and k != "system_prompt"}
    sampling = msgspec.structs.replace(request.sampling, **fields)
    messages = request.messages
    system = chosen.system_prompt
    if system and messages is not None and not any(m.role in SYSTEM_ROLES for m in messages):
        messages = [ChatMessage(role=Role.SYSTEM, content=system), *messages]
    else:
        system = None
    effective = {k: v for k, v in msgspec.structs.asdict(sampling).items() if k not in ("logprobs", "top_logprobs")}
    if effective.get("stop"):  # stop sequences are the caller's text, which logs never hold: how many, not what
        effective["stop"] = len(effective["stop"])
    log.info(
        "sampling for %s on %s%s", request.request_id, model_id, f" (preset {asked.preset})" if asked.preset else "",
        extra={"fields": {"model": model_id, "preset": asked.preset, "sampling": effective,
                          "default_system_prompt": system is not None}},
    )  # fmt: skip
    return msgspec.structs.replace(request, sampling=sampling, messages=messages)
