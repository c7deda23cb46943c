"""Where batches live between gateway restarts: in Redis when REDIS_URL is set (every gateway sees every batch),
else in files under the data directory (the gateways of one host share them).

A batch is its API object (written whole by the gateway running it, which holds its lease), one recorded result
per line (the first record of a line wins, so a line is never completed twice), a cancel flag (set by whoever
asks; the runner acts on it), and a lease: Redis keys that expire unless renewed, or an flock the kernel
releases when its process dies. A gateway that finds a batch unfinished and unleased resumes it, skipping the
lines already recorded.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

from gateway import redis_store
from gateway.batches.files import write_atomically

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
LEASE_SECONDS = 30  # a Redis lease not renewed this long is free: its gateway is gone


class BatchStore(ABC):
    @abstractmethod
    async def save(self, service: str, batch: dict) -> None:
        """Write the batch object whole."""

    @abstractmethod
    async def load(self, batch_id: str) -> tuple[str, dict] | None:
        """(its service, the batch)."""

    async def get(self, service: str, batch_id: str) -> dict | None:
        """The batch, if it is `service`'s."""
        found = await self.load(batch_id)
        return found[1] if found and found[0] == service else None

    @abstractmethod
    async def list(self, service: str) -> list[dict]:
        """The service's batches, newest first."""

    @abstractmethod
    async def active(self) -> list[str]:
        """Ids of the batches not yet finished, of every service."""

    @abstractmethod
    async def record(self, batch_id: str, index: int, result: dict) -> bool:
        """Record line `index`'s result unless it has one; whether this record is the one kept."""

    @abstractmethod
    async def results(self, batch_id: str) -> dict[int, dict]: ...

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask for the batch to be cancelled (its runner acts on it)."""

    @abstractmethod
    async def cancelled(self, batch_id: str) -> int | None:
        """When a cancel was asked for, or None."""

    @abstractmethod
    async def lease(self, batch_id: str, owner: str) -> bool:
        """Take the batch's lease, or keep it if `owner` holds it; whether `owner` holds it now."""

    @abstractmethod
    async def release(self, batch_id: str, owner: str) -> None: ...

    async def close(self) -> None:
        return None


class FileBatchStore(BatchStore):
    """`batches/<id>.json` the object and its service, `<id>.results.jsonl` one record per line appended as it
    completes, `<id>.cancel` the flag, `<id>.lock` the lease (an exclusive flock held while the batch runs)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir) / "batches"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, int] = {}  # batch id -> the locked file descriptor
        self._recorded: dict[str, set[int]] = {}  # lines recorded, by batch (read once, then kept up to date)

    def _path(self, batch_id: str, suffix: str) -> Path:
        if not batch_id.startswith("batch_") or not batch_id[6:].isalnum():
            raise KeyError(batch_id)
        return self.dir / f"{batch_id}{suffix}"

    def _read(self, batch_id: str) -> dict | None:
        try:
            return json.loads(self._path(batch_id, ".json").read_bytes())
        except (FileNotFoundError, KeyError, ValueError):
            return None

    async def load(self, batch_id: str) -> tuple[str, dict] | None:
        record = self._read(batch_id)
        return (record["service"], record["batch"]) if record else None

    async def save(self, service: str, batch: dict) -> None:
        write_atomically(self._path(batch["id"], ".json"), json.dumps({"service": service, "batch": batch}).encode())

    async def list(self, service: str) -> list[dict]:
        records = [self._read(p.name.removesuffix(".json")) for p in self.dir.glob("batch_*.json")]
        mine = [r["batch"] for r in records if r and r["service"] == service]
        return sorted(mine, key=lambda b: b["created_at"], reverse=True)

    async def active(self) -> list[str]:
        records = [self._read(p.name.removesuffix(".json")) for p in self.dir.glob("batch_*.json")]
        return [r["batch"]["id"] for r in records if r and r["batch"]["status"] in ACTIVE]

    async def record(self, batch_id: str, index: int, result: dict) -> bool:
        # Only the lease holder records, one line at a time on its event loop: a check, then an append.
        if batch_id not in self._recorded:
            self._recorded[batch_id] = set(await self.results(batch_id))
        if index in self._recorded[batch_id]:
            return False
        with self._path(batch_id, ".results.jsonl").open("ab") as f:
            f.write(json.dumps({"index": index, "result": result}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._recorded[batch_id].add(index)
        return True

    async def results(self, batch_id: str) -> dict[int, dict]:
        try:
            lines = self._path(batch_id, ".results.jsonl").read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        out = {}
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a record cut short by a crash: that line was not completed
            out.setdefault(entry["index"], entry["result"])
        return out

    async def cancel(self, batch_id: str) -> None:
        self._path(batch_id, ".cancel").touch()

    async def cancelled(self, batch_id: str) -> int | None:
        try:
            return int(self._path(batch_id, ".cancel").stat().st_mtime)
        except FileNotFoundError:
            return None

    async def lease(self, batch_id: str, owner: str) -> bool:
        if batch_id in self._locks:
            return True
        fd = os.open(self._path(batch_id, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._locks[batch_id] = fd
        return True

    async def release(self, batch_id: str, owner: str) -> None:
        fd = self._locks.pop(batch_id, None)
        self._recorded.pop(batch_id, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    async def close(self) -> None:
        for batch_id in list(self._locks):
            await self.release(batch_id, "")


# KEYS: lease. ARGV: owner, milliseconds. Takes a free lease or renews one's own.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisBatchStore(BatchStore):
    """mlxs:batch:<id> the object and its service (JSON), mlxs:batch:<id>:results a hash of line -> result,
    mlxs:batch:<id>:cancel the flag, mlxs:batch:<id>:lease the owner (expiring), mlxs:batches:<service> the
    service's batch ids by creation time, mlxs:batches:active the unfinished ones."""

    def __init__(self, url: str, prefix: str = "mlxs"):
        self._prefix = prefix
        self._redis = redis_store.connect(url)
        self._lease = self._redis.register_script(_LEASE)
        self._release = self._redis.register_script(_RELEASE)

    def _key(self, batch_id: str, part: str = "") -> str:
        return f"{self._prefix}:batch:{batch_id}" + (f":{part}" if part else "")

    async def save(self, service: str, batch: dict) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._key(batch["id"]), json.dumps({"service": service, "batch": batch}))
        pipe.zadd(f"{self._prefix}:batches:{service}", {batch["id"]: batch["created_at"]})
        if batch["status"] in ACTIVE:
            pipe.sadd(f"{self._prefix}:batches:active", batch["id"])
        else:
            pipe.srem(f"{self._prefix}:batches:active", batch["id"])
        await redis_store.guarded(pipe.execute())

    async def load(self, batch_id: str) -> tuple[str, dict] | None:
        raw = await redis_store.guarded(self._redis.get(self._key(batch_id)))
        record = json.loads(raw) if raw else None
        return (record["service"], record["batch"]) if record else None

    async def list(self, service: str) -> list[dict]:
        ids = await redis_store.guarded(self._redis.zrevrange(f"{self._prefix}:batches:{service}", 0, -1))
        batches = [await self.get(service, batch_id) for batch_id in ids]
        return [b for b in batches if b is not None]

    async def active(self) -> list[str]:
        return sorted(await redis_store.guarded(self._redis.smembers(f"{self._prefix}:batches:active")))

    async def record(self, batch_id: str, index: int, result: dict) -> bool:
        return bool(
            await redis_store.guarded(self._redis.hsetnx(self._key(batch_id, "results"), index, json.dumps(result)))
        )

    async def results(self, batch_id: str) -> dict[int, dict]:
        raw = await redis_store.guarded(self._redis.hgetall(self._key(batch_id, "results")))
        return {int(index): json.loads(result) for index, result in raw.items()}

    async def cancel(self, batch_id: str) -> None:
        await redis_store.guarded(self._redis.set(self._key(batch_id, "cancel"), int(time.time()), nx=True))

    async def cancelled(self, batch_id: str) -> int | None:
        asked = await redis_store.guarded(self._redis.get(self._key(batch_id, "cancel")))
        return int(asked) if asked else None

    async def lease(self, batch_id: str, owner: str) -> bool:
        keys = [self._key(batch_id, "lease")]
        return bool(await redis_store.guarded(self._lease(keys=keys, args=[owner, LEASE_SECONDS * 1000])))

    async def release(self, batch_id: str, owner: str) -> None:
        await redis_store.guarded(self._release(keys=[self._key(batch_id, "lease")], args=[owner]))

    async def close(self) -> None:
        await self._redis.aclose()


def make_batch_store(redis_url: str | None, data_dir: str) -> BatchStore:
    return RedisBatchStore(redis_url) if redis_url else FileBatchStore(data_dir)
