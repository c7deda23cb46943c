"""Builds the OpenAPI 3.1 document from the app's routes and the structs in operations.py."""

from __future__ import annotations

import re
from typing import Literal

import msgspec
from starlette.routing import BaseRoute, Mount, Route

from gateway import dialects
from gateway.errors import openai_error_body, shape_for
from gateway.middleware.auth import PUBLIC_PATHS, PUBLIC_PREFIXES
from gateway.openapi.operations import JSON, OPERATIONS, Operation

REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
# Statuses any operation may answer with an error body (the middleware's 401, 413, 415 and 429 included).
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "422", "429", "503", "504", "507")


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """OpenAI's error body: the OpenAI dialects' and the server's own."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    """Anthropic's error body, on the Anthropic Messages paths."""

    type: Literal["error"]
    error: AnthropicErrorDetail


def _error_schema(path: str) -> type[msgspec.Struct]:
    return OpenAIError if shape_for(path) is openai_error_body else AnthropicError


def _tags() -> dict[str, str]:
    """Route path -> the name of the dialect that declares it."""
    return {route.path: dialect.name for dialect in dialects.DIALECTS for route in dialect.routes}


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _summary(handler) -> str:
    """The first paragraph of the handler's docstring, else its name."""
    doc = (handler.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else handler.__name__.strip("_").replace("_", " ")


def _parameters(path: str, op: Operation, schemas: dict) -> list[dict]:
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PARAM.findall(path)]
    if op.query is not None:
        struct = schemas[op.query.__name__]
        for name, schema in struct["properties"].items():
            required = name in struct.get("required", ())
            params.append({"name": name, "in": "query", "required": required, "schema": schema})
    return params


def _binary(schema: dict) -> dict:
    """A form struct's schema with its `bytes` fields as uploaded files."""
    props = {k: {"type": "string", "format": "binary"} if v.get("contentEncoding") else v for k, v in schema.items()}
    return props


def _body(op: Operation, schemas: dict) -> dict | None:
    if op.body is not None:
        content = {JSON: {"schema": {"$ref": REF.format(name=op.body.__name__)}}}
        return {"required": not op.body_optional, "content": content}
    if op.form is not None:
        schema = dict(schemas[op.form.__name__])
        schema["properties"] = _binary(schema["properties"])
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    return None


def _operation(path: str, method: str, handler, summary: str, tag: str, schemas: dict) -> dict:
    op = OPERATIONS.get(handler, Operation())
    error_response = {"$ref": f"#/components/responses/{_error_schema(path).__name__}"}
    responses = {op.status: {"description": "Success", "content": {media: {} for media in op.answers}}}
    responses |= {status: error_response for status in ERROR_STATUSES} | {"default": error_response}
    words = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"\1", path)).strip("_")
    out = {
        "operationId": f"{method}_{words}",
        "summary": summary,
        "tags": [tag],
        "parameters": _parameters(path, op, schemas),
        "responses": responses,
    }
    if _public(path):
        out["security"] = []  # probes, metrics, the dashboard and these docs need no key
    if (body := _body(op, schemas)) is not None:
        out["requestBody"] = body
    return out


def _routes(routes: list[BaseRoute]):
    """(route path, method, handler, summary) of every route; a Mount of static files as one GET."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield route.path, method.lower(), route.endpoint, _summary(route.endpoint)
        elif isinstance(route, Mount):
            yield f"{route.path}/{{path:path}}", "get", route.app, f"Static files under {route.path}/"


def build(routes: list[BaseRoute], version: str) -> dict:
    """The document for these routes (the app's)."""
    structs = [op.body or op.form or op.query for op in OPERATIONS.values()]
    structs += [op.query for op in OPERATIONS.values() if op.query and (op.body or op.form)]
    structs += [OpenAIError, AnthropicError]
    _, schemas = msgspec.json.schema_components(
        sorted({s for s in structs if s}, key=lambda s: s.__name__), ref_template=REF
    )
    tags = _tags()
    paths: dict[str, dict] = {}
    for route_path, method, handler, summary in _routes(routes):
        path = _PARAM.sub(r"{\1}", route_path)
        tag = tags.get(route_path, "server")
        paths.setdefault(path, {})[method] = _operation(path, method, handler, summary, tag, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "MLX LLM Server", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                shape.__name__: {
                    "description": shape.__doc__,
                    "content": {JSON: {"schema": {"$ref": REF.format(name=shape.__name__)}}},
                }
                for shape in (OpenAIError, AnthropicError)
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A service key or a token"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
