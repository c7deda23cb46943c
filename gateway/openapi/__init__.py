"""The OpenAPI 3.1 document of the gateway (`GET /openapi.json`) and the page that renders it (`GET /docs`).

The document is built from the app's own routes, so every route is in it, and from the msgspec structs the
handlers decode their bodies with (operations.py says which handler decodes which), so it cannot drift from what
the server validates. Errors are described in the shape of the dialect that owns each path (gateway/errors.py).
"""
