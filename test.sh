#!/usr/bin/env bash
# The one test command: installs what the tests need, then lint, format check and the test suite.
# With CI set (.ci/run sets CI=true) a tool the tests need that cannot be installed stops the run, and a test
# that would skip for a missing tool fails instead (tests/conftest.py).
set -euo pipefail
source "$(dirname "$0")/scripts/lib.sh"
ensure_uv
ensure_test_tools  # chromium, redis-server, openssl, OpenBLAS (also what speeds the model tests up)
ensure_audio_tools  # ffmpeg (audio in and out of the gateway), espeak-ng (speech for the transcription tests)
sync_project  # with llama.cpp (the gguf tests) and the host's MLX backend
"${UV[@]}" run --no-sync ruff check .
"${UV[@]}" run --no-sync ruff format --check .
exec "${UV[@]}" run --no-sync pytest "$@"
