"""The Files API's files, on disk under the server's data directory (MLX_SERVER_DATA_DIR, default <run dir>/data):
`files/<id>` holds the bytes and `files/<id>.json` the file object and the service it belongs to.

Both are written to a temporary name and renamed, the object last, so a file is listed only once its bytes are
all there. Another service's file reads as missing (a 404), as a stored response does.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from gateway.errors import APIError
from protocol import ErrorCode


def not_found(file_id: str) -> APIError:
    return APIError(ErrorCode.NOT_FOUND, f"No such File object: {file_id}", param="file_id")


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class FileStore:
    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir) / "files"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _paths(self, file_id: str) -> tuple[Path, Path] | None:
        if not file_id.startswith("file-") or not file_id[5:].replace("-", "").isalnum():
            return None  # not an id this store gave out: never a path outside its directory
        return self.dir / file_id, self.dir / f"{file_id}.json"

    def add(self, service: str, data: bytes, filename: str, purpose: str, file_id: str | None = None) -> dict:
        """Store `data` (a given `file_id` makes the write idempotent: a batch's output written twice is one file)."""
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        content, meta = self._paths(file_id)
        write_atomically(content, data)
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        write_atomically(meta, json.dumps({"service": service, "file": obj}).encode())
        return obj

    def get(self, service: str, file_id: str) -> dict | None:
        paths = self._paths(file_id)
        try:
            record = json.loads(paths[1].read_bytes()) if paths else None
        except FileNotFoundError:
            return None
        return record["file"] if record and record["service"] == service else None

    def content(self, service: str, file_id: str) -> bytes:
        if self.get(service, file_id) is None:
            raise not_found(file_id)
        return self._paths(file_id)[0].read_bytes()

    def list(self, service: str, purpose: str | None = None) -> list[dict]:
        """The service's files, newest first."""
        files = []
        for meta in self.dir.glob("file-*.json"):
            try:
                record = json.loads(meta.read_bytes())
            except (FileNotFoundError, ValueError):
                continue  # deleted meanwhile
            if record["service"] == service and purpose in (None, record["file"]["purpose"]):
                files.append(record["file"])
        return sorted(files, key=lambda f: f["created_at"], reverse=True)

    def delete(self, service: str, file_id: str) -> bool:
        if self.get(service, file_id) is None:
            return False
        content, meta = self._paths(file_id)
        meta.unlink(missing_ok=True)  # the object first: from here on the file is gone for every reader
        content.unlink(missing_ok=True)
        return True
