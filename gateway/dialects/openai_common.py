"""What the OpenAI dialects share (chat completions, completions, the Responses API): the common request fields and
what they ask of sampling, the usage dict, the fingerprint, how a stream ends or fails on OpenAI's wire, and how
thinking is asked for and named. Not a dialect itself: it declares no routes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.core.http import StreamWire
from gateway.dialects.bounds import MinP, RepetitionPenalty, Seed, StopSequence, TopK, TopP, stops, temperature
from gateway.errors import APIError, openai_error_body
from gateway.sampling_defaults import Asked
from gateway.sse import sse
from protocol import ErrorCode
from protocol.generation import Finished, SamplingDefaults

SYSTEM_FINGERPRINT = "mlx-llm-server"
DONE = b"data: [DONE]\n\n"  # the last event of an OpenAI stream
# A late error is an unnamed event holding OpenAI's error body; keepalives are SSE comments.
OPENAI_WIRE = StreamWire(error=lambda exc: sse(openai_error_body(exc)))


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class Sampling(msgspec.Struct, kw_only=True):
    """The sampling fields every OpenAI dialect takes (top_k, min_p, repetition_penalty, preset beyond OpenAI). One
    left out (or null) is the server's to fill: the model's defaults or the preset (gateway/sampling_defaults.py)."""

    model: str | None = None  # None: the server's default model
    temperature: temperature(2) | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    preset: Annotated[str, Meta(min_length=1, max_length=64)] | None = None  # one of the config's `presets:`
    stream: bool = False


class OpenAIRequest(Sampling, kw_only=True):
    """The fields chat completions and completions share: the model, sampling, stop sequences, streaming."""

    stop: StopSequence | stops(4) | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1)] = 1
    user: str | None = None


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
THINKING_OFF: tuple[str, ...] = ("none", "minimal")  # efforts that turn a reasoning model's thinking off


def template_kwargs(kwargs: dict | None, effort: str | None) -> dict:
    """The chat template's extra variables: the request's own, and `enable_thinking` from a reasoning effort
    (a reasoning model's template thinks or not; the effort's degrees between are not the template's to know)."""
    out = dict(kwargs or {})
    if effort is not None:
        out.setdefault("enable_thinking", effort not in THINKING_OFF)
    return out


def asked(req: Sampling, max_tokens: int | None, builtin: SamplingDefaults | None = None) -> Asked:
    """What the request set itself of the fields the server may default, and its preset (`builtin`: the dialect's
    own values where neither the request nor the config says)."""
    stop = getattr(req, "stop", None)
    own = SamplingDefaults(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        max_tokens=max_tokens,
        stop=[stop] if isinstance(stop, str) else stop,
    )
    return Asked(own=own, preset=req.preset, builtin=builtin or SamplingDefaults())


def include_usage(options: StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


def usage(event: Finished) -> dict:
    u = event.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def reasoning_keys(service) -> tuple[str, ...]:
    """The message fields a service reads thinking from: `reasoning_content` (DeepSeek's, vllm-mlx's), `reasoning`
    (vLLM's, OpenRouter's), or both (the default), as its `reasoning_field` says."""
    field = getattr(service, "reasoning_field", "both")
    return ("reasoning_content", "reasoning") if field == "both" else (field,)


def whole_only(stream: bool) -> None:
    """A batch line is answered whole: one that asks to stream is refused."""
    if stream:
        raise APIError(ErrorCode.INVALID_REQUEST, "A batch line is answered whole: leave out stream", param="stream")
