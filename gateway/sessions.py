"""Conversation sessions: one SessionStore interface, a Redis backend (production: shared by every gateway
process, survives their restarts) and an in-memory one (development), chosen by REDIS_URL.

Every operation names the calling service; a session of another service is indistinguishable from one that does
not exist (None), so the API answers 404 and session ids reveal nothing. Each use renews a session's TTL.
Appending is atomic (one Lua script in Redis; one synchronous step on the event loop in memory): concurrent turns
on one session lose no message, and a turn's question and answer are never separated.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.errors import APIError
from protocol import ErrorCode

MAX_ID_LENGTH = 64


class SessionStoreUnavailable(Exception):
    """The store (Redis) did not answer."""


@dataclass
class SessionInfo:
    id: str
    service: str
    created_at: float
    updated_at: float
    expires_at: float
    message_count: int
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "object": "session",
            "service": self.service,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "expires_at": int(self.expires_at),
            "message_count": self.message_count,
            "metadata": self.metadata,
        }


async def using_store(work):
    """Await a store operation; an unreachable store is a 503 that says so."""
    try:
        return await work
    except SessionStoreUnavailable:
        raise APIError(
            ErrorCode.SESSION_STORE_UNAVAILABLE,
            "The session store (Redis) is unreachable; requests without a session_id still work",
        ) from None


def not_found(session_id: str) -> APIError:
    return APIError(ErrorCode.SESSION_NOT_FOUND, f"No session '{session_id}'", param="session_id")


def new_session_id() -> str:
    return "sess_" + secrets.token_urlsafe(18)


def valid_id(session_id: str) -> bool:
    return 0 < len(session_id) <= MAX_ID_LENGTH and session_id.isascii()


class SessionStore(ABC):
    def __init__(self, ttl_seconds: int):
        self.ttl = ttl_seconds

    @abstractmethod
    async def create(self, service: str, metadata: dict, messages: list[dict]) -> SessionInfo: ...

    @abstractmethod
    async def get(self, service: str, session_id: str) -> SessionInfo | None: ...

    @abstractmethod
    async def messages(self, service: str, session_id: str) -> list[dict] | None:
        """The stored conversation, oldest first; renews the TTL."""

    @abstractmethod
    async def append(self, service: str, session_id: str, messages: list[dict]) -> int | None:
        """Append all of `messages` in one atomic step; the new message count (None: no such session)."""

    @abstractmethod
    async def delete(self, service: str, session_id: str) -> bool: ...

    @abstractmethod
    async def list(self, service: str, limit: int = 100) -> list[SessionInfo]:
        """The service's live sessions, most recently used first."""

    async def ping(self) -> None:
        """Raises SessionStoreUnavailable if the store does not answer (memory always does)."""
        return None

    async def close(self) -> None:
        return None


# -- in memory ---------------------------------------------------------------------------------------------


@dataclass
class _Stored:
    info: SessionInfo
    messages: list[dict]


class MemorySessionStore(SessionStore):
    """For development and single-process use; everything is lost when the gateway stops. Bounded: a service keeps
    at most `max_per_service` sessions (a new one evicts its least recently used), and expired sessions are swept
    on a timer, not only when touched."""

    def __init__(self, ttl_seconds: int, max_per_service: int = 1000):
        super().__init__(ttl_seconds)
        self.max_per_service = max_per_service
        self._sessions: dict[str, _Stored] = {}
        self._sweeper: asyncio.Task | None = None

    def _live(self, service: str, session_id: str) -> _Stored | None:
        stored = self._sessions.get(session_id)
        if stored is None:
            return None
        if stored.info.expires_at <= time.time():
            del self._sessions[session_id]
            return None
        return stored if stored.info.service == service else None

    def sweep(self) -> int:
        """Drop every expired session; how many."""
        now = time.time()
        expired = [i for i, s in self._sessions.items() if s.info.expires_at <= now]
        for session_id in expired:
            del self._sessions[session_id]
        return len(expired)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.ttl / 2, 0.5), 60))
            self.sweep()

    def _touch(self, stored: _Stored, updated: bool = False) -> None:
        now = time.time()
        stored.info.expires_at = now + self.ttl
        if updated:
            stored.info.updated_at = now
        stored.info.message_count = len(stored.messages)

    async def create(self, service: str, metadata: dict, messages: list[dict]) -> SessionInfo:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.sweep()
        mine = sorted((s.info for s in self._sessions.values() if s.info.service == service), key=_last_used)
        for info in mine[: max(0, len(mine) - self.max_per_service + 1)]:
            del self._sessions[info.id]  # the service's least recently used, to stay within its bound
        now = time.time()
        info = SessionInfo(new_session_id(), service, now, now, now + self.ttl, len(messages), dict(metadata))
        self._sessions[info.id] = _Stored(info, list(messages))
        return _copy(info)

    async def get(self, service: str, session_id: str) -> SessionInfo | None:
        stored = self._live(service, session_id)
        if stored is None:
            return None
        self._touch(stored)
        return _copy(stored.info)

    async def messages(self, service: str, session_id: str) -> list[dict] | None:
        stored = self._live(service, session_id)
        if stored is None:
            return None
        self._touch(stored)
        return list(stored.messages)

    async def append(self, service: str, session_id: str, messages: list[dict]) -> int | None:
        stored = self._live(service, session_id)
        if stored is None:
            return None
        stored.messages.extend(messages)  # no await between the check and the write: atomic on the loop
        self._touch(stored, updated=True)
        return len(stored.messages)

    async def delete(self, service: str, session_id: str) -> bool:
        if self._live(service, session_id) is None:
            return False
        del self._sessions[session_id]
        return True

    async def list(self, service: str, limit: int = 100) -> list[SessionInfo]:
        self.sweep()
        mine = [s.info for s in self._sessions.values() if s.info.service == service]
        return [_copy(i) for i in sorted(mine, key=lambda i: i.expires_at, reverse=True)[:limit]]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


def _last_used(info: SessionInfo) -> float:
    return info.expires_at  # every use renews it


def _copy(info: SessionInfo) -> SessionInfo:
    return SessionInfo(**{**info.__dict__, "metadata": dict(info.metadata)})


# -- Redis -------------------------------------------------------------------------------------------------
# Keys: mlxs:session:<id> (hash: service, created_at, updated_at, metadata), mlxs:session:<id>:messages (list of
# JSON messages), mlxs:service:<name>:sessions (sorted set of the service's session ids by expiry time).

# KEYS: meta, messages, index. ARGV: service, ttl, now, id, [messages...]. Returns -1 (not this service's
# session, or gone) or the new message count. With no messages it only renews the TTL.
_TOUCH_APPEND = """
if redis.call('HGET', KEYS[1], 'service') ~= ARGV[1] then return -1 end
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if #ARGV > 4 then
  for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
redis.call('EXPIRE', KEYS[3], ttl)
return redis.call('LLEN', KEYS[2])
"""

# KEYS: meta, messages, index. ARGV: service, id. Returns 1 if deleted, 0 if not this service's session.
_DELETE = """
if redis.call('HGET', KEYS[1], 'service') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""


class RedisSessionStore(SessionStore):
    def __init__(self, url: str, ttl_seconds: int, prefix: str = "mlxs"):
        super().__init__(ttl_seconds)
        self._prefix = prefix
        # Fail fast when Redis is down (a 503 in a second, not a request hanging), and reconnect by itself once
        # it is back: one retry covers a pooled connection that died with the old server.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._touch_append = self._redis.register_script(_TOUCH_APPEND)
        self._delete = self._redis.register_script(_DELETE)

    def _keys(self, service: str, session_id: str) -> list[str]:
        base = f"{self._prefix}:session:{session_id}"
        return [base, f"{base}:messages", f"{self._prefix}:service:{service}:sessions"]

    async def _call(self, work):
        try:
            return await work
        except (RedisError, OSError) as exc:
            raise SessionStoreUnavailable(str(exc) or type(exc).__name__) from None

    async def create(self, service: str, metadata: dict, messages: list[dict]) -> SessionInfo:
        now = time.time()
        info = SessionInfo(new_session_id(), service, now, now, now + self.ttl, len(messages), dict(metadata))
        meta, stored, index = self._keys(service, info.id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            meta,
            mapping={"service": service, "created_at": now, "updated_at": now, "metadata": json.dumps(metadata)},
        )
        pipe.expire(meta, self.ttl)
        if messages:
            pipe.rpush(stored, *(json.dumps(m) for m in messages))
            pipe.expire(stored, self.ttl)
        pipe.zadd(index, {info.id: now + self.ttl})
        pipe.expire(index, self.ttl)
        await self._call(pipe.execute())
        return info

    async def _touch(self, service: str, session_id: str, messages: list[dict] = ()) -> int | None:
        if not valid_id(session_id):
            return None
        keys = self._keys(service, session_id)
        args = [service, self.ttl, time.time(), session_id, *(json.dumps(m) for m in messages)]
        count = await self._call(self._touch_append(keys=keys, args=args))
        return None if count < 0 else count

    async def get(self, service: str, session_id: str) -> SessionInfo | None:
        count = await self._touch(service, session_id)
        if count is None:
            return None
        fields = await self._call(self._redis.hgetall(self._keys(service, session_id)[0]))
        if fields.get("service") != service:
            return None
        return self._info(session_id, fields, count, time.time() + self.ttl)

    async def messages(self, service: str, session_id: str) -> list[dict] | None:
        if await self._touch(service, session_id) is None:
            return None
        raw = await self._call(self._redis.lrange(self._keys(service, session_id)[1], 0, -1))
        return [json.loads(m) for m in raw]

    async def append(self, service: str, session_id: str, messages: list[dict]) -> int | None:
        return await self._touch(service, session_id, messages)

    async def delete(self, service: str, session_id: str) -> bool:
        if not valid_id(session_id):
            return False
        return bool(await self._call(self._delete(keys=self._keys(service, session_id), args=[service, session_id])))

    async def list(self, service: str, limit: int = 100) -> list[SessionInfo]:
        index = self._keys(service, "-")[2]
        now = time.time()

        async def read():
            await self._redis.zremrangebyscore(index, "-inf", now)
            ids = await self._redis.zrevrange(index, 0, limit - 1, withscores=True)
            pipe = self._redis.pipeline(transaction=False)
            for session_id, _ in ids:
                meta, stored, _ = self._keys(service, session_id)
                pipe.hgetall(meta)
                pipe.llen(stored)
            results = await pipe.execute()
            return ids, results

        ids, results = await self._call(read())
        infos = []
        for i, (session_id, expires_at) in enumerate(ids):
            fields, count = results[2 * i], results[2 * i + 1]
            if fields.get("service") == service:  # else expired between the two reads
                infos.append(self._info(session_id, fields, count, expires_at))
        return infos  # most recently used first: the index is ordered by expiry, which every use renews

    def _info(self, session_id: str, fields: dict, count: int, expires_at: float) -> SessionInfo:
        return SessionInfo(
            id=session_id,
            service=fields["service"],
            created_at=float(fields.get("created_at", 0)),
            updated_at=float(fields.get("updated_at", 0)),
            expires_at=expires_at,
            message_count=int(count),
            metadata=json.loads(fields.get("metadata") or "{}"),
        )

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def make_session_store(redis_url: str | None, ttl_seconds: int, max_per_service: int = 1000) -> SessionStore:
    """Redis expires its keys on its own clock; the memory store sweeps and bounds itself."""
    return RedisSessionStore(redis_url, ttl_seconds) if redis_url else MemorySessionStore(ttl_seconds, max_per_service)
