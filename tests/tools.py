"""Tools from outside Python that some tests drive, and what a test does when one is missing.

On a laptop such a test is skipped with the reason; in CI (CI set, as .ci/run sets it) it fails, because
./test.sh installs every tool listed here and a green CI run must mean those tests ran.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil

import pytest

# name -> how a test finds it
TOOLS = {
    "redis-server": lambda: shutil.which("redis-server"),
    "chromium": lambda: shutil.which("chromium") or shutil.which("chromium-browser"),
    "openssl": lambda: shutil.which("openssl"),
    "openblas": lambda: ctypes.util.find_library("openblas"),
    "ffmpeg": lambda: shutil.which("ffmpeg"),
    "espeak-ng": lambda: shutil.which("espeak-ng"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_tool(name: str) -> str | None:
    return TOOLS[name]()


def require_tool(name: str) -> str:
    """The tool's path; without it the calling test skips, or fails in CI. Every skip for a missing tool goes
    through here (directly, or through the `needs_tool` marker)."""
    found = find_tool(name)
    if found:
        return found
    message = f"{name} is not installed (./test.sh installs it)"
    if in_ci():
        pytest.fail(f"CI: {message}; a missing tool is an error in CI, not a skip", pytrace=False)
    pytest.skip(message)
