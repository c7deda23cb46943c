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
