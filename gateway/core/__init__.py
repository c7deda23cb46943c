"""The generation core: one path from any API dialect to a worker and back, as an async iterator of events.

caller.py      Caller (who asks: service, trace id, observers, how to tell it left), Observer, ObserverFactory,
               Event, ClientGone
generation.py  GenerationCore (start, answer, call), Generation (async iterator of events, release), Answer,
               collect: admission, the invisible resend, abort on release
http.py        the same for a Starlette request (caller_of, start, answer, call), and `stream`: a streamed
               answer's keepalive, late error and release, rendered by the dialect through its StreamWire

Observers, not wiring: what watches generations registers an ObserverFactory, app-wide on the core (token
charging: `RateLimiter.token_charger`) or per request on its Caller (telemetry: `RequestRecord.observer`).
"""
