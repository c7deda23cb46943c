"""A local stand-in for the Hugging Face hub, for `ctl pull` tests: the endpoints huggingface_hub calls to download
a model repo (HF_ENDPOINT points at it), serving directories the test builds, with faults a test can arm.

GET  /api/models/{org}/{name}[/revision/{rev}]     {"id", "sha", "siblings"} (model_info)
GET  /api/models/{org}/{name}/tree/{revision}       [{"type": "file", "path", "size", "oid"}] (list_repo_tree)
HEAD /{org}/{name}/resolve/{revision}/{path}        ETag, X-Repo-Commit, Content-Length (file metadata)
GET  /{org}/{name}/resolve/{revision}/{path}        the file; `Range: bytes=N-` answers 206 from byte N

Unknown repos and revisions answer 404 with the X-Error-Code huggingface_hub maps to its own exceptions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 256 * 1024


class Repo:
    def __init__(self, directory: Path):
        self.files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
        listing = "".join(f"{name}:{p.stat().st_size}\n" for name, p in self.files.items())
        self.commit = hashlib.sha1(listing.encode()).hexdigest()  # 40 hex digits, as a git commit


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        # Faults, by "org/name/path" of a file: its next GET answers 500; drops the connection after so many bytes;
        # sends this many bytes per second.
        self.fail_once: set[str] = set()
        self.cut_once: dict[str, int] = {}
        self.throttle: dict[str, float] = {}
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def add_repo(self, repo_id: str, directory: Path) -> str:
        """Serve `directory` as the repo `repo_id` (org/name); returns its commit."""
        self.repos[repo_id] = repo = Repo(directory)
        return repo.commit

    def gets(self, repo_id: str, name: str) -> list[str | None]:
        """The Range header of every GET of the file `name` of the repo `repo_id`."""
        with self._lock:
            return [
                r
                for method, path, r in self.requests
                if method == "GET" and path.startswith(f"/{repo_id}/resolve/") and path.endswith(f"/{name}")
            ]

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?$")


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub._lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            if match := API.match(path):
                repo_id, kind, revision = match.groups()
                return self._api(repo_id, kind or "revision", revision or "main")
            if match := RESOLVE.match(path):
                return self._file(*match.groups(), body=body)
            self._error(404, "EntryNotFound")

        def _repo(self, repo_id: str, revision: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
            elif revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def _api(self, repo_id: str, kind: str, revision: str) -> None:
            repo = self._repo(repo_id, unquote(revision))
            if repo is None:
                return
            if kind == "revision":
                data = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]}
            else:
                data = [
                    {"type": "file", "path": f, "size": p.stat().st_size, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f, p in repo.files.items()
                ]
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _file(self, repo_id: str, revision: str, name: str, body: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            if name not in repo.files:
                return self._error(404, "EntryNotFound")
            key = f"{repo_id}/{name}"
            if body and key in hub.fail_once:
                hub.fail_once.discard(key)
                return self._error(500, None)
            data = repo.files[name].read_bytes()
            start = int(m.group(1)) if (m := re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))) else 0
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            cut = hub.cut_once.pop(key, None)
            rate = hub.throttle.get(key)
            for offset in range(start, len(data), CHUNK):
                if cut is not None and offset - start >= cut:
                    self.close_connection = True  # mid-body: the client sees the connection drop
                    return
                try:
                    self.wfile.write(data[offset : offset + CHUNK])
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away (a cancelled pull)
                if rate:
                    time.sleep(CHUNK / rate)

        def _error(self, status: int, code: str | None) -> None:
            payload = json.dumps({"error": code or "server error"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
