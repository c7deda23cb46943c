"""The GGUF's own tokenizer and chat template, as llama-server applies them, behind the few tokenizer methods the
worker's prompt code uses (worker/prompt_encoding.py, tool_prompt.py, tool_calls.py).

So a gguf model's prompts go through the same checks as an MLX model's (images refused, context length, history
trimming, the tool fallback for templates without tools), while the text is rendered by llama.cpp's jinja engine
and tokenized by llama.cpp, exactly as llama-server's own chat endpoint would. Tool calls in the output are read
with the mlx-lm parser that the template implies, like the MLX worker's.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING

import msgspec
from mlx_lm.tokenizer_utils import _infer_tool_parser  # the template -> parser table the MLX worker relies on too

if TYPE_CHECKING:
    from worker.llama_server import LocalHTTP


class TemplateError(ValueError):
    pass


class LlamaTemplate:
    def __init__(self, client: LocalHTTP, chat_template: str | None):
        self._client = client
        self.chat_template = chat_template
        self.has_tool_calling = False
        self.tool_call_start = self.tool_call_end = self.tool_parser = None
        name = _infer_tool_parser(self)
        if name is not None:
            module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
            self.has_tool_calling = True
            self.tool_call_start, self.tool_call_end = module.tool_call_start, module.tool_call_end
            self.tool_parser = module.parse_tool_call

    def get_vocab(self) -> dict:
        return {}  # the parser is inferred from the template alone

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, tools=None, **template_kwargs
    ) -> list[int]:
        body = {"messages": messages, "add_generation_prompt": add_generation_prompt}
        if tools:
            body["tools"] = tools
        if template_kwargs:  # a request's chat_template_kwargs (enable_thinking, ...), as llama.cpp's chat endpoint
            body["chat_template_kwargs"] = template_kwargs
        text = self._post("/apply-template", body)["prompt"]
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        # As llama-server tokenizes a chat prompt: BOS where the model wants one, special tokens parsed.
        return self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]

    def encode_continuation(self, text: str) -> list[int]:
        """Tokens of text that continues a prompt (no BOS)."""
        return self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]

    def _post(self, path: str, body: dict) -> dict:
        status, content = self._client.call("POST", path, body)
        if status != 200:
            raise TemplateError(error_message(content))
        return msgspec.json.decode(content)


def error_message(body: bytes) -> str:
    """llama-server's error text from {"error": {"message": ...}} (or the body as it is)."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]
