"""Stored responses (`store: true`, the default): in Redis when REDIS_URL is set, so every gateway process finds
them; else in this process's memory. Per service, with a TTL (`gateway.responses.ttl_seconds`).

A stored response is one record: the response object as the API returned it, the whole input it was generated
from (the conversation before it included, so `previous_response_id` and `input_items` need one read), and the
service it belongs to. A record is written whole in one step (one SET in Redis), so no reader ever finds half of
one. Another service's record reads as None, the same as a missing one: its id is a 404.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import OrderedDict

from gateway import redis_store
from gateway.errors import APIError
from protocol import ErrorCode

MEMORY_LIMIT = 10_000  # responses kept in memory: the oldest go first beyond it


async def using(work):
    """Await a store operation; an unreachable store is a 503 that says so."""
    return await redis_store.using(work, "response")


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(ErrorCode.NOT_FOUND, f"Response with id '{response_id}' not found.", param=param)


class ResponseStore(ABC):
    def __init__(self, ttl_seconds: int):
        self.ttl = ttl_seconds

    @abstractmethod
    async def put(self, service: str, response: dict, context: list[dict]) -> None:
        """Store `response` (its `id` is the key) and the input it was generated from, in one step."""

    @abstractmethod
    async def get(self, service: str, response_id: str) -> tuple[dict, list[dict]] | None:
        """(response, input items) of the service's stored response, or None."""

    @abstractmethod
    async def delete(self, service: str, response_id: str) -> bool: ...

    async def close(self) -> None:
        return None


class MemoryResponseStore(ResponseStore):
    def __init__(self, ttl_seconds: int, limit: int = MEMORY_LIMIT):
        super().__init__(ttl_seconds)
        self._records: OrderedDict[str, tuple[float, str, str]] = OrderedDict()  # id -> (expiry, service, JSON)
        self._limit = limit

    async def put(self, service: str, response: dict, context: list[dict]) -> None:
        record = json.dumps({"response": response, "input": context})  # a copy: later edits do not reach it
        self._records[response["id"]] = (time.time() + self.ttl, service, record)
        while len(self._records) > self._limit:
            self._records.popitem(last=False)

    async def get(self, service: str, response_id: str) -> tuple[dict, list[dict]] | None:
        found = self._records.get(response_id)
        if found is None or found[1] != service:
            return None
        if found[0] <= time.time():
            del self._records[response_id]
            return None
        record = json.loads(found[2])
        return record["response"], record["input"]

    async def delete(self, service: str, response_id: str) -> bool:
        if await self.get(service, response_id) is None:
            return False
        del self._records[response_id]
        return True


# KEYS: the record. ARGV: service. Deletes the record if it is this service's; 1 if it did.
_DELETE = """
local raw = redis.call('GET', KEYS[1])
if not raw or cjson.decode(raw)['service'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisResponseStore(ResponseStore):
    """Key mlxs:response:<id>: the JSON record {service, response, input}, expiring after the TTL."""

    def __init__(self, url: str, ttl_seconds: int, prefix: str = "mlxs"):
        super().__init__(ttl_seconds)
        self._prefix = prefix
        self._redis = redis_store.connect(url)
        self._delete = self._redis.register_script(_DELETE)

    def _key(self, response_id: str) -> str:
        return f"{self._prefix}:response:{response_id}"

    async def put(self, service: str, response: dict, context: list[dict]) -> None:
        record = json.dumps({"service": service, "response": response, "input": context})
        await redis_store.guarded(self._redis.set(self._key(response["id"]), record, ex=self.ttl))

    async def get(self, service: str, response_id: str) -> tuple[dict, list[dict]] | None:
        raw = await redis_store.guarded(self._redis.get(self._key(response_id)))
        record = json.loads(raw) if raw else None
        if record is None or record.get("service") != service:
            return None
        return record["response"], record["input"]

    async def delete(self, service: str, response_id: str) -> bool:
        return bool(await redis_store.guarded(self._delete(keys=[self._key(response_id)], args=[service])))

    async def close(self) -> None:
        await self._redis.aclose()


def make_response_store(redis_url: str | None, ttl_seconds: int) -> ResponseStore:
    return RedisResponseStore(redis_url, ttl_seconds) if redis_url else MemoryResponseStore(ttl_seconds)
