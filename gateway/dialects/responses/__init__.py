"""OpenAI Responses, POST /v1/responses (also /api/v1/responses), streaming or not, and the stored responses:
GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items.

schema.py     the request types (msgspec), validated at the edge; input items decoded one by one by type
translate.py  input items -> the listed items input_items shows -> chat messages; tools, text.format, reasoning
render.py     ResponseBuilder: events -> output items, the Responses event sequence, the final response
store.py      stored responses (Redis or memory), per service, with a TTL; one atomic write per response
routes.py     the handlers and the dialect's routes
A stored response keeps the whole input it was generated from, so `previous_response_id` rebuilds the
conversation with one read (and the worker's prompt cache serves the part it has seen). Errors are OpenAI's shape.
"""

from gateway.dialects.responses.routes import DIALECT, batch_line

__all__ = ["DIALECT", "batch_line"]
