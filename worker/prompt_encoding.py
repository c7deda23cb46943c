"""Turning a GenerateRequest into prompt tokens, and refusing what cannot fit, before any model work."""

from __future__ import annotations

import logging

from protocol.errors import ErrorCode
from protocol.generation import GenerateRequest
from worker.tool_prompt import template_inputs

log = logging.getLogger("worker.prompt")
SYSTEM_ROLES = ("system", "developer")
# Arguments of apply_chat_template that the worker sets itself: a request's chat_template_kwargs cannot.
RESERVED_KWARGS = frozenset({"conversation", "messages", "tools", "tokenize", "add_generation_prompt", "return_dict"})


class RequestRejected(ValueError):
    def __init__(self, code: ErrorCode, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param  # the request field at fault, if one is


def require_generation(request) -> None:
    """A generating model refuses an encoder or speech request (embed, rerank, transcribe, speech) sent to it."""
    if not isinstance(request, GenerateRequest):
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            "This model generates text; embeddings and reranking need an embedding model, audio an stt or tts model",
        )


def encode_prompt(
    tokenizer, request: GenerateRequest, context_length: int | None = None, thinks: bool = False
) -> list[int]:
    """The prompt's tokens. `thinks`: the model has thinking markers, so its template is asked to think unless the
    request says otherwise (`chat_template_kwargs: {"enable_thinking": false}`)."""
    require_generation(request)
    if request.messages and any(m.images for m in request.messages):
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST, "Image inputs are not supported by this model: it is a text-only model"
        )
    if (request.messages is None) == (request.prompt is None):
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "give exactly one of messages or prompt")
    if request.messages is not None:
        tools = request.tools if request.tool_choice.mode != "none" else []
        messages, tool_kwargs = template_inputs(tokenizer, request.messages, tools)
        extra = {"enable_thinking": True} if thinks else {}
        extra |= {k: v for k, v in request.chat_template_kwargs.items() if k not in RESERVED_KWARGS}
        extra |= tool_kwargs
        prompt = _apply_template(tokenizer, messages, extra)
        if request.trim_history and context_length is not None:
            room = _room_needed(request, context_length)
            prompt = _trim_history(tokenizer, messages, extra, prompt, room, context_length, request.trace_id)
        return prompt
    prompt = list(tokenizer.encode(request.prompt))
    if not prompt:
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "the prompt is empty")
    return prompt


def _apply_template(tokenizer, messages: list[dict], extra: dict) -> list[int]:
    try:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)
    except Exception as exc:  # jinja templates raise on roles/orders they do not support
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST, f"the model's chat template rejected the messages: {exc}"
        ) from exc
    if isinstance(prompt, str):  # some tokenizers return text when no tokenization was asked
        prompt = tokenizer.encode(prompt, add_special_tokens=False)
    return list(prompt)


def _room_needed(request: GenerateRequest, context_length: int) -> int:
    """Tokens a trimmed conversation leaves for the answer: what the request asked for, else a quarter of the
    context (at most 1,024)."""
    return request.sampling.max_tokens or min(context_length // 4, 1024)


def _trim_history(
    tokenizer,
    messages: list[dict],
    extra: dict,
    prompt: list[int],
    room: int,
    context_length: int,
    trace_id: str | None = None,
) -> list[int]:
    """Drop the oldest turns of a stored conversation until the prompt leaves `room` tokens in the context.

    System (and developer) messages are kept wherever they are. The rest is cut only where a user message
    starts, so the conversation still opens with a user turn, and the last turn is always kept: if even that
    does not fit, the context-length check that follows refuses the request as usual.
    """
    budget = context_length - room
    if len(prompt) <= budget:
        return prompt
    system = [m for m in messages if m["role"] in SYSTEM_ROLES]
    turns = [m for m in messages if m["role"] not in SYSTEM_ROLES]
    cuts = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
    if not cuts:
        return prompt
    # Fewer tokens the later the cut: binary search for the earliest cut that fits, else the last one.
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _apply_template(tokenizer, system + turns[cuts[mid] :], extra)
        if len(candidate) <= budget:
            best, hi = (cuts[mid], candidate), mid - 1
        else:
            lo = mid + 1
    cut, trimmed = best or (cuts[-1], _apply_template(tokenizer, system + turns[cuts[-1] :], extra))
    log.info(
        "[x-request-id %s] trimmed the %d oldest messages of a conversation to fit the context (%d tokens)",
        trace_id,
        cut,
        context_length,
    )
    return trimmed


def max_tokens_for(
    request: GenerateRequest, prompt_tokens: int, context_length: int, counted: str = "in the prompt"
) -> int:
    """How many tokens the request may generate: what it asked for, refused if that overflows the context."""
    room = context_length - prompt_tokens
    wanted = request.sampling.max_tokens
    if room <= 0 or (wanted is not None and wanted > room):
        asked = f"{prompt_tokens} {counted}" + (f" + {wanted} to generate" if wanted else "")
        raise RequestRejected(
            ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            f"This model's maximum context length is {context_length} tokens; the request needs {asked}.",
        )
    return wanted if wanted is not None else room
