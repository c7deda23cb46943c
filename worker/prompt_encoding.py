"""Turning a GenerateRequest into prompt tokens, and refusing what cannot fit, before any model work."""

from __future__ import annotations

from protocol.errors import ErrorCode
from protocol.generation import GenerateRequest
from worker.tool_prompt import template_inputs


class RequestRejected(ValueError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def encode_prompt(tokenizer, request: GenerateRequest) -> list[int]:
    if not isinstance(request, GenerateRequest):  # an embed or rerank request sent to a text model
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST, "This model generates text; embeddings and reranking need an embedding model"
        )
    if request.messages and any(m.images for m in request.messages):
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST, "Image inputs are not supported by this model: it is a text-only model"
        )
    if (request.messages is None) == (request.prompt is None):
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "give exactly one of messages or prompt")
    if request.messages is not None:
        tools = request.tools if request.tool_choice.mode != "none" else []
        messages, extra = template_inputs(tokenizer, request.messages, tools)
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)
        except Exception as exc:  # jinja templates raise on roles/orders they do not support
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST, f"the model's chat template rejected the messages: {exc}"
            ) from exc
        if isinstance(prompt, str):  # some tokenizers return text when no tokenization was asked
            prompt = tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)
    prompt = list(tokenizer.encode(request.prompt))
    if not prompt:
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "the prompt is empty")
    return prompt


def max_tokens_for(request: GenerateRequest, prompt_tokens: int, context_length: int) -> int:
    """How many tokens the request may generate: what it asked for, refused if that overflows the context."""
    room = context_length - prompt_tokens
    wanted = request.sampling.max_tokens
    if room <= 0 or (wanted is not None and wanted > room):
        asked = f"{prompt_tokens} in the prompt" + (f" + {wanted} to generate" if wanted else "")
        raise RequestRejected(
            ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            f"This model's maximum context length is {context_length} tokens; the request needs {asked}.",
        )
    return wanted if wanted is not None else room
