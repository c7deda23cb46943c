"""Per-service rate limits with the `limits` library: requests per minute (a moving window, so a limit of N
admits exactly N in any 60 seconds) and tokens per minute (a fixed window charged with each answer's prompt
and completion tokens once they are known, an aborted stream's so far, an embedding or rerank request's input;
a service whose window is spent waits for the next one).

With REDIS_URL the counters live in Redis, so every gateway process shares one limit; without it, in this
process's memory. If Redis stops answering, the limits fall back to memory until it answers again: a limiter
outage must not stop requests that need nothing else from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from gateway.auth import Service
from gateway.errors import APIError
from protocol import ErrorCode
from protocol.embedding import Embeddings, RerankScores
from protocol.generation import Abort, Finished, GenerationError, TextChunk

log = logging.getLogger("gateway.ratelimit")
KEY_PREFIX = "mlxs-limits"
WARN_EVERY = 30.0  # seconds between two warnings that Redis is unreachable
RETRY_REDIS_AFTER = 5.0  # after a failure, count in memory this long before trying Redis again
_charging: set[asyncio.Task] = set()  # token charges under way (a task must be referenced until it ends)


class _Strategies:
    def __init__(self, storage):
        self.storage = storage
        self.requests = MovingWindowRateLimiter(storage)
        self.tokens = FixedWindowRateLimiter(storage)


class RateLimiter:
    def __init__(self, redis_url: str | None):
        self._memory = _Strategies(MemoryStorage())
        self._redis = None
        if redis_url:
            storage = RedisStorage(
                f"async+{redis_url}",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=KEY_PREFIX,
                socket_connect_timeout=1,
                socket_timeout=2,
            )
            self._redis = _Strategies(storage)
        self._warned_at = 0.0
        self._redis_down_until = 0.0  # a Redis that does not answer costs each request a timeout: not every time

    async def _run(self, work):
        """`work(strategies)` against Redis, or against memory if there is no Redis or it is unreachable."""
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await work(self._redis)
            except (StorageError, OSError) as exc:
                now = time.monotonic()
                self._redis_down_until = now + RETRY_REDIS_AFTER
                if now - self._warned_at > WARN_EVERY:
                    self._warned_at = now
                    log.warning("rate limits: Redis unreachable (%s); counting in this process meanwhile", exc)
        return await work(self._memory)

    async def admit(self, service: Service) -> dict[str, str]:
        """Count one request against the service's limits; the rate-limit headers of its response. Raises a 429
        (with Retry-After and the same headers) when a limit is spent."""
        headers: dict[str, str] = {}
        if service.tokens_per_minute:
            item = RateLimitItemPerMinute(service.tokens_per_minute)

            async def tokens(s: _Strategies):
                return await s.tokens.test(item, "tpm", service.name), await s.tokens.get_window_stats(
                    item, "tpm", service.name
                )

            allowed, stats = await self._run(tokens)
            headers |= _headers(item.amount, stats, "tokens")
            if not allowed:
                raise _limited(service, "tokens", stats, headers)
        if service.requests_per_minute:
            item = RateLimitItemPerMinute(service.requests_per_minute)

            async def requests(s: _Strategies):
                allowed = await s.requests.hit(item, "rpm", service.name)
                return allowed, await s.requests.get_window_stats(item, "rpm", service.name)

            allowed, stats = await self._run(requests)
            request_headers = _headers(item.amount, stats, "requests")
            headers |= request_headers | {k.removesuffix("-requests"): v for k, v in request_headers.items()}
            if not allowed:
                raise _limited(service, "requests", stats, headers)
        return headers

    def token_charger(self, caller, model_id: str):
        """An ObserverFactory for the generation core: a generation's tokens are charged to its caller's service
        when it ends: at Finished its usage, at an Abort (the client left) or an error the prompt and the tokens
        produced so far, and an embedding or rerank request's input tokens. A service without a tokens-per-minute
        limit is not watched."""
        service = caller.service
        if service is None or not service.tokens_per_minute:
            return None
        produced = {"prompt": 0, "completion": 0}

        def observe(event) -> None:
            if isinstance(event, TextChunk):
                produced["prompt"] = event.prompt_tokens or produced["prompt"]  # on the first chunk
                produced["completion"] = event.completion_tokens
                return
            if isinstance(event, Finished):
                tokens = event.usage.total_tokens
            elif isinstance(event, Embeddings | RerankScores):
                tokens = event.prompt_tokens
            elif isinstance(event, Abort | GenerationError):
                tokens = produced["prompt"] + produced["completion"]
            else:
                return
            produced["prompt"] = produced["completion"] = 0  # charged once
            task = asyncio.get_running_loop().create_task(self.charge_tokens(service, tokens))
            _charging.add(task)
            task.add_done_callback(_charging.discard)

        return observe

    async def charge_tokens(self, service: Service | None, tokens: int) -> None:
        """Charge an answer's tokens to its service's tokens-per-minute window (best effort)."""
        if service is None or not service.tokens_per_minute or tokens <= 0:
            return
        item = RateLimitItemPerMinute(service.tokens_per_minute)
        try:
            await self._run(lambda s: s.tokens.hit(item, "tpm", service.name, cost=tokens))
        except Exception:  # never fail an answer that was already produced
            log.exception("could not charge %d tokens to %s", tokens, service.name)

    async def close(self) -> None:
        if self._redis is not None:
            client = getattr(self._redis.storage.bridge, "storage", None)
            if client is not None:
                await client.aclose()


def _reset_seconds(stats) -> int:
    return max(0, math.ceil(stats.reset_time - time.time()))


def _headers(limit: int, stats, kind: str) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, stats.remaining)),
        f"x-ratelimit-reset-{kind}": str(_reset_seconds(stats)),
    }


def _limited(service: Service, kind: str, stats, headers: dict[str, str]) -> APIError:
    wait = max(1, _reset_seconds(stats))
    return APIError(
        ErrorCode.RATE_LIMITED,
        f"Rate limit reached for service '{service.name}' ({kind} per minute); retry in {wait}s",
        headers=headers | {"Retry-After": str(wait)},
    )
