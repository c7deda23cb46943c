"""OpenAI Chat Completions, POST /v1/chat/completions (also /api/v1/chat/completions), streaming or not.

schema.py        the request types (msgspec), validated at the edge
translate.py     request -> GenerateRequest: messages and images, tools, response_format, sampling
render.py        Answer -> chat.completion; events -> chat.completion.chunk SSE
session_turn.py  `session_id`: a stored conversation's history in, the turn stored when the answer is complete
routes.py        the handler and the dialect's routes
Errors are OpenAI's shape (gateway/errors.py's default).
"""

from gateway.dialects.chat.routes import DIALECT, batch_line

__all__ = ["DIALECT", "batch_line"]
