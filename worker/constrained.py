"""Constrained decoding: a logits processor that lets through only tokens a grammar accepts next.

llguidance compiles a JSON schema (or a Lark grammar with embedded JSON schemas) into a token-level matcher
for the model's own tokenizer; every step the processor feeds it the token just sampled and masks the
logits to the tokens it allows. Once the grammar is complete only end-of-sequence is allowed, so the
output always parses and validates (unless max_tokens cuts it short: finish_reason "length").
"""

from __future__ import annotations

import json
from functools import lru_cache

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np
from mlx_lm.tool_parsers import json_tools

from protocol.errors import ErrorCode
from protocol.generation import ToolSpec
from worker.prompt_encoding import RequestRejected

# One line of JSON with the usual separators: free whitespace lets a small model pad the output forever.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    # About a second for a large vocabulary: built once per worker (its tokenizer lives as long).
    return llguidance.hf.from_tokenizer(tokenizer._tokenizer, eos_token=sorted(tokenizer.eos_token_ids))


class GrammarProcessor:
    """An mlx-lm logits processor, one per sequence: (tokens so far, logits of shape (1, vocab)) -> logits."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self._matcher = matcher
        self._started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:  # the first call sees the prompt; later ones end with the token sampled last
            self._matcher.consume_token(int(tokens.reshape(-1)[-1].item()))
        self._started = True
        words = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(words, bitorder="little")
        vocab = logits.shape[-1]
        allowed = allowed[:vocab] if allowed.size >= vocab else np.pad(allowed, (0, vocab - allowed.size))
        return mx.where(mx.array(allowed.astype(np.bool_)), logits, -mx.inf)


def _processor(tokenizer, grammar: str) -> GrammarProcessor:
    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), grammar)
    if matcher.is_error():
        raise RequestRejected(ErrorCode.INVALID_REQUEST, f"the schema cannot be enforced: {matcher.get_error()}")
    return GrammarProcessor(matcher)


def json_schema_processor(tokenizer, schema: dict) -> GrammarProcessor:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
    except Exception as exc:  # llguidance raises ValueError-like errors for schemas it cannot compile
        raise RequestRejected(ErrorCode.INVALID_REQUEST, f"the JSON schema cannot be enforced: {exc}") from exc
    return _processor(tokenizer, grammar)


def tool_call_processor(tokenizer, tools: list[ToolSpec], name: str | None) -> GrammarProcessor:
    """One call in the json_tools format, to `name` or to any of `tools`: what tool_choice "required" asks."""
    chosen = [t for t in tools if name is None or t.name == name]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    schema = (calls[0] if len(calls) == 1 else {"anyOf": calls}) | {"x-guidance": JSON_STYLE}
    start, end = json_tools.tool_call_start + "\n", "\n" + json_tools.tool_call_end  # mlx-lm's json_tools format
    grammar = f"start: {json.dumps(start)} call {json.dumps(end)}\n"
    grammar += f"call: %json {json.dumps(schema)}\n"
    return _processor(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
