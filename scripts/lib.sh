#!/usr/bin/env bash
# Shared by the scripts: find or install uv, run from the project root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then
    UV=(uv)
  elif python3 -m uv --version >/dev/null 2>&1; then
    UV=(python3 -m uv)
  else
    echo "uv not found: installing it with pip" >&2
    python3 -m pip install --quiet uv
    UV=(python3 -m uv)
  fi
}

# Debian packages, best effort and idempotent: installed where apt-get runs as root; `why` says what for,
# `without` what happens when they cannot be installed.
apt_install() {
  local why=$1 without=$2
  shift 2
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || { echo "$*: not installed ($without)" >&2; return 0; }
  echo "installing $* $why" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1; } ||
    echo "could not install $*: $without" >&2
  return 0
}

# OpenBLAS makes MLX's Linux CPU build several times faster (worker/cpu_tuning.py picks it up when present).
ensure_openblas() {
  [ "$(uname -s)" = Linux ] || return 0
  ldconfig -p 2>/dev/null | grep 'libopenblas\.so\.0' >/dev/null && return 0
  apt_install "for faster CPU inference" "MLX keeps its reference BLAS (slower)" libopenblas0-pthread
}

# Each command missing from PATH gets the Debian package of the same name (best effort, as apt_install).
ensure_commands() {
  local why=$1 without=$2
  shift 2
  [ "$(uname -s)" = Linux ] || return 0
  local missing=() command
  for command in "$@"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("$command")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "$why" "$without" "${missing[@]}"
}

# Audio: ffmpeg decodes uploads and encodes speech in the gateway; espeak-ng is the phonemizer of TTS models
# that use one (Kitten TTS, Kokoro outside English) and speaks the transcription tests' sentences.
ensure_audio_tools() {
  ensure_commands "for audio" "speech requests fail and their tests are skipped" ffmpeg espeak-ng
}

# What the tests drive: chromium for the dashboard's browser test, redis-server for the session, rate-limit
# and readiness tests. Without them those tests are skipped, with the reason.
ensure_test_tools() {
  ensure_commands "for the tests" "the tests that need them are skipped" chromium redis-server
}
