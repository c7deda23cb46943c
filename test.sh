#!/usr/bin/env bash
# The one test command: installs what the tests need, then lint, format check and the test suite.
set -euo pipefail
source "$(dirname "$0")/scripts/lib.sh"
ensure_uv
ensure_openblas  # speeds the model tests up where it can be installed; they pass without it
ensure_test_tools  # chromium (dashboard test), redis-server (sessions, rate limits, readiness)
ensure_audio_tools  # ffmpeg (audio in and out of the gateway), espeak-ng (speech for the transcription tests)
"${UV[@]}" sync --frozen
"${UV[@]}" run --no-sync ruff check .
"${UV[@]}" run --no-sync ruff format --check .
exec "${UV[@]}" run --no-sync pytest "$@"
