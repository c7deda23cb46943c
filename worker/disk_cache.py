"""The prompt cache's disk tier: KV states the memory tier lets go of, kept as files that outlive the worker.

Entries the memory tier evicts, and every entry when the worker drains, are written in mlx-lm's
`save_prompt_cache` format (safetensors) to `<prompt_cache_dir>/<model identity>/<key>.safetensors`, the key
a hash of the token prefix and the KV settings. The file's metadata holds the identity, the KV settings
(kv_bits and kv_group_size) and the tokens, so the index is the files' headers, read when the worker starts (a
few KB each; the arrays stay on disk until a request needs them). A file written under other KV settings is a
miss: it stays in the folder (and in its budget) for a worker of those settings, but is never offered to this
one, whose batch cannot mix KV kinds and would otherwise convert, or drop, the restored state. A
request whose prompt shares a longer prefix with a file than with anything in memory restores that file into
the memory tier. A file that is truncated, unreadable, of another format or model, is skipped with a log line
and removed; it is never served.

Writes run on a writer thread: the generation thread only queues an evicted entry (its arrays are already
evaluated, so the writer touches no lazy graph) and goes on. A file is written under a temporary name and
renamed, so a worker killed mid-write leaves no half file behind under a real name. The folder keeps to its
byte budget by removing the least recently used files (a restore counts as a use).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import PromptTrie, load_prompt_cache, make_prompt_cache, save_prompt_cache

log = logging.getLogger("worker.disk_cache")

FORMAT = "mlx-llm-server.prompt-cache.v2"  # v2: the KV settings are in the key and the metadata
_MODEL = "model"  # PromptTrie's model key: one model per folder
_FILE = re.compile(r"^[0-9a-f]{64}\.safetensors$")
_PARTIAL = ".partial.safetensors"  # mx.save_safetensors insists on the extension
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz", ".bin", ".json", ".model", ".txt")


def kv_settings(bits: int | None, group_size: int) -> str:
    """The KV settings a state was computed under, as its file's metadata records them."""
    return "float" if bits is None else f"bits={bits},group_size={group_size}"


def model_identity(source: str, config: dict, model) -> str:
    """A hash of what decides a KV state: the model's files (names, sizes, mtimes), its config, its parameters'
    names, shapes and dtypes as loaded (CPU tuning may change them), and the KV cache classes it makes.
    Anything that changes one of them leaves the old files unread."""
    digest = hashlib.sha256(FORMAT.encode())
    directory = Path(source)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name.endswith(_WEIGHT_SUFFIXES):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    else:
        digest.update(source.encode())  # a hub repo id
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, array in tree_flatten(model.parameters()):
        digest.update(f"{name}:{array.shape}:{array.dtype}\n".encode())
    digest.update(",".join(type(c).__name__ for c in make_prompt_cache(model)).encode())
    return digest.hexdigest()


@dataclass
class DiskEntry:
    path: Path
    tokens: list[int]
    nbytes: int
    used: float  # the file's mtime: written or last restored
    offered: bool = True  # written under this worker's KV settings (others are kept, counted, never served)


class DiskCache:
    def __init__(self, folder: str | Path, budget_bytes: int, identity: str, layers: int, kv: str = "float"):
        self.budget_bytes = budget_bytes
        self.kv = kv  # kv_settings(): only files written under these are offered
        self.folder = Path(folder) / identity[:32]
        self._identity = identity
        self._layers = layers  # a cache of another length is not this model's
        self._entries: dict[str, DiskEntry] = {}  # by key
        self._trie = PromptTrie()  # tokens -> key
        self._lock = threading.Lock()  # the index is read by the generation thread, updated by the writer
        self._queue: queue.Queue = queue.Queue()
        self._pending_bytes = 0  # queued and not yet written: bounded, so a slow disk cannot hoard memory
        self.folder.mkdir(parents=True, exist_ok=True)
        self._read_index()
        self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-writer", daemon=True)
        self._writer.start()

    @classmethod
    def for_model(
        cls, folder: str | Path, budget_bytes: int, source: str, config: dict, model, kv: str = "float"
    ) -> DiskCache:
        identity = model_identity(source, config, model)
        return cls(folder, budget_bytes, identity, len(make_prompt_cache(model)), kv)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _read_index(self) -> None:
        for path in self.folder.iterdir():
            if path.name.endswith(_PARTIAL):  # a write the last worker did not finish
                path.unlink(missing_ok=True)
            elif _FILE.match(path.name):
                header = self._check_header(path)
                if header is not None:
                    tokens, kv = header
                    if kv != self.kv:
                        log.debug("prompt cache file %s not offered: written at KV %s, not %s", path.name, kv, self.kv)
                    stat = path.stat()
                    entry = DiskEntry(path, tokens, stat.st_size, stat.st_mtime, offered=kv == self.kv)
                    self._add(path.name.removesuffix(".safetensors"), entry)
        if self._entries:
            offered = sum(e.offered for e in self._entries.values())
            log.info(
                "prompt cache on disk: %d entries (%d at this worker's KV settings), %.1f MB in %s",
                len(self), offered, self.nbytes / 2**20, self.folder,
            )  # fmt: skip

    def _check_header(self, path: Path) -> tuple[list[int], str] | None:
        """The tokens a file holds the KV state of and the KV settings it was computed under, or None (logged,
        and the file removed) if it cannot be used."""
        try:
            with path.open("rb") as file:
                (length,) = struct.unpack("<Q", file.read(8))
                header = json.loads(file.read(length))
            metadata = header.pop("__metadata__", {})
            end = max((t["data_offsets"][1] for t in header.values()), default=0)
            if path.stat().st_size != 8 + length + end:
                return self._skip(path, f"its size is not the {8 + length + end} bytes its header describes")
            if metadata.get("0.format") != FORMAT or metadata.get("0.identity") != self._identity:
                return self._skip(path, "it was written for another model or format")
            return json.loads(metadata["0.tokens"]), metadata["0.kv"]
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            return self._skip(path, f"its header cannot be read ({exc})")

    @staticmethod
    def _skip(path: Path, why: str) -> None:
        log.warning("prompt cache file %s skipped and removed: %s", path.name, why)
        path.unlink(missing_ok=True)
        return None

    def _add(self, key: str, entry: DiskEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            if entry.offered:
                self._trie.add(_MODEL, entry.tokens, key)

    def _remove(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry.offered:
                self._trie.pop(_MODEL, entry.tokens)
        if entry is not None:
            entry.path.unlink(missing_ok=True)

    def key(self, tokens: list[int]) -> str:
        """The file name for `tokens` under this worker's KV settings: the same prefix under other settings is
        another file."""
        digest = hashlib.sha256(self.kv.encode())
        digest.update(struct.pack(f"<{len(tokens)}q", *tokens))
        return digest.hexdigest()

    def usable_prefix(self, tokens: list[int]) -> tuple[str | None, int]:
        """(key, length) of the file sharing the longest prefix with `tokens`, at most all but the last token
        (generation starts from its logits); (None, 0) if none does."""
        with self._lock:
            result = self._trie.search(_MODEL, tokens)
        if result.exact is not None:
            return self.key(result.exact), len(tokens) - 1
        shorter = len(result.shorter) if result.shorter is not None else 0
        if result.longer is not None and result.common_prefix > shorter:
            return self.key(result.longer), min(len(tokens) - 1, result.common_prefix)
        return (self.key(result.shorter), shorter) if shorter else (None, 0)

    def restore(self, key: str) -> tuple[list[int], list] | None:
        """(tokens, KV state) of a file, read now; None (logged, the file removed) if it cannot be used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        started = time.perf_counter()
        try:
            cache, metadata = load_prompt_cache(str(entry.path), return_metadata=True)
            mx.eval([c.state for c in cache])
            if (
                metadata.get("identity") != self._identity
                or metadata.get("kv") != self.kv
                or len(cache) != self._layers
            ):
                raise ValueError("it does not match this model")
        except Exception as exc:  # mx.load and from_state say little about a damaged file; all mean the same here
            log.warning("prompt cache file %s skipped and removed: it cannot be loaded (%s)", entry.path.name, exc)
            self._remove(key)
            return None
        entry.used = time.time()  # a use: the budget removes the least recently used first
        with contextlib.suppress(OSError):
            os.utime(entry.path)
        log.info(
            "restored a %d-token prompt prefix from disk in %.0f ms",
            len(entry.tokens),
            1e3 * (time.perf_counter() - started),
        )
        return entry.tokens, cache

    def save(self, tokens: list[int], cache: list, nbytes: int, limit_pending: int) -> None:
        """Queue the KV state of exactly `tokens` for writing, unless a file holds it already, or it would take the
        queue past `limit_pending` bytes (the entry is then lost, as it would be without a disk tier)."""
        key = self.key(tokens)
        if key in self._entries or nbytes > self.budget_bytes:
            return
        with self._lock:
            behind = self._pending_bytes > 0 and self._pending_bytes + nbytes > limit_pending  # one always fits
            if not behind:
                self._pending_bytes += nbytes
        if behind:
            log.warning("prompt cache writes are behind (%d MB queued): an entry is dropped", self._pending_bytes >> 20)
            return
        self._queue.put((key, list(tokens), cache, nbytes))

    def flush(self, timeout: float) -> bool:
        """Wait until every queued entry is written (the worker drains); False if `timeout` passed first."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            key, tokens, cache, nbytes = item
            try:
                self._write(key, tokens, cache)
            except Exception:
                log.exception("writing a prompt cache entry failed; it is skipped")
            finally:
                with self._lock:
                    self._pending_bytes -= nbytes

    def _write(self, key: str, tokens: list[int], cache: list) -> None:
        path = self.folder / f"{key}.safetensors"
        partial = self.folder / f"{key}{_PARTIAL}"
        metadata = {"format": FORMAT, "identity": self._identity, "kv": self.kv, "tokens": json.dumps(tokens)}
        save_prompt_cache(str(partial), cache, metadata)
        os.replace(partial, path)
        self._add(key, DiskEntry(path, tokens, path.stat().st_size, time.time()))
        self._keep_to_budget()

    def _keep_to_budget(self) -> None:
        with self._lock:
            by_age = sorted(self._entries.items(), key=lambda item: item[1].used)
        total = sum(e.nbytes for _, e in by_age)
        for key, entry in by_age:
            if total <= self.budget_bytes:
                break
            self._remove(key)
            total -= entry.nbytes
