"""Anthropic Messages, POST /v1/messages and /anthropic/v1/messages (streaming or not), and .../count_tokens.

schema.py     the request types (msgspec), validated at the edge
translate.py  request -> GenerateRequest: system, text, image and tool blocks; tool_choice; output_config.format
render.py     Answer -> message; events -> message_start ... message_stop SSE; Anthropic's error shape
routes.py     the handlers and the dialect's routes; its errors cover every path under /v1/messages and /anthropic/
"""

from gateway.dialects.anthropic.routes import DIALECT, is_anthropic_path

__all__ = ["DIALECT", "is_anthropic_path"]
