"""The run directory holds one server's local sockets and pid files, for its owner's eyes only.

ZeroMQ's ipc transport has no authentication of its own: whoever can open a socket file can send frames to
the supervisor or a worker. So the directory is created 0700 (an existing one is tightened), and every ipc
socket bound in it is made 0600 right after its bind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

IPC = "ipc://"


def private_run_dir(path: Path) -> Path:
    """Create `path` 0700, or tighten it to 0700; refuse a directory others share (such as /tmp itself)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        if info.st_mode & (stat.S_ISVTX | stat.S_IWOTH) or info.st_uid != os.getuid():
            raise PermissionError(
                f"run directory {path} is shared with other users (mode {stat.S_IMODE(info.st_mode):o}, "
                f"owner uid {info.st_uid}): give the server a directory of its own (MLX_SERVER_RUN_DIR)"
            )
        path.chmod(0o700)
    return path


def bind_private(sock, endpoint: str) -> None:
    """Bind a ZeroMQ socket; an ipc socket file is made readable and writable by its owner only."""
    sock.bind(endpoint)
    if endpoint.startswith(IPC) and not endpoint.startswith(IPC + "@"):  # "@": Linux's abstract namespace
        os.chmod(endpoint.removeprefix(IPC), 0o600)
