"""What the gateway's Redis-backed stores share (stored responses, batches): a client that fails fast when Redis
is down and reconnects by itself once it is back, and its failures as one exception, answered as a 503."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.errors import APIError
from protocol import ErrorCode


class StoreUnavailable(Exception):
    """Redis did not answer."""


def connect(url: str) -> aioredis.Redis:
    # A 503 in a second rather than a request hanging; one retry covers a pooled connection that died with the
    # old server.
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 1), decode_responses=True
    )


async def guarded(work):
    """Await a Redis call; its failure is StoreUnavailable."""
    try:
        return await work
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from None


async def using(work, what: str):
    """Await a store operation for a request; an unreachable store is a 503 that says which."""
    try:
        return await work
    except StoreUnavailable:
        raise APIError(ErrorCode.STORE_UNAVAILABLE, f"The {what} store (Redis) is unreachable") from None
