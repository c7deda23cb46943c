"""The gateway's ASGI middleware, one per module, outermost first (gateway/app.py stacks them):

request_context  RequestContext: X-Request-ID accepted (if well-formed) or generated, returned, set for every log line
(telemetry       Telemetry: times every answer: metrics, activity log, access log; see gateway/telemetry.py)
trusted_hosts    TrustedHosts: a Host header outside the configured list gets 400
browser_guard    BrowserGuard (keyless development mode only): a Host other than loopback gets 403, a POST that is not
                 JSON (or multipart, for uploads) 415, so web pages cannot drive the API
cors             JSONCORSMiddleware: browser origins from the config's allowlist (none: no CORS headers)
body_limit       BodyLimit: request bodies over the limit get 413, whether announced by Content-Length or not
auth             Auth: the caller's service on `request.state.service` (401 without a valid key or token), then
                 its rate limits (429), whose headers every response carries

Errors raised here never reach the app's exception handlers, so each one answers itself, in the error shape of
the API dialect that owns the path (`APIError.response(path)`, see gateway/errors.py).
"""
