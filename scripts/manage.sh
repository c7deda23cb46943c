#!/usr/bin/env bash
# Operate a running server:  ./scripts/manage.sh status | stop | logs
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_dotenv
ensure_uv
export MLX_SERVER_RUN_DIR=${MLX_SERVER_RUN_DIR:-$PWD/run}
port=${PORT:-9123}
pidfile="$MLX_SERVER_RUN_DIR/honcho.pid"
# start_server.sh wrote the URL it served; https when TLS is on (its certificate is not checked for this probe)
url=$(cat "$MLX_SERVER_RUN_DIR/gateway.url" 2>/dev/null || echo "http://127.0.0.1:$port")
scheme=${url%%://*}
port=${url##*:}
health="$scheme://127.0.0.1:$port/api/v1/health"

# A process that has exited but not been reaped yet (a zombie, whose parent has not waited for it) is stopped.
alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }
running() { [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; }

case "${1:-status}" in
  status)
    if running; then echo "server: running (honcho pid $(cat "$pidfile"))"; else echo "server: not running"; fi
    echo "--- gateway $health/ready (dashboard: $scheme://127.0.0.1:$port/)"
    curl -sk --max-time 5 "$health/ready" && echo || echo "gateway: not answering"
    echo "--- supervisor"
    "${UV[@]}" run --no-sync supervisor ctl status || true
    echo
    "${UV[@]}" run --no-sync supervisor ctl ps || true
    ;;
  stop)
    if ! running; then echo "server: not running"; exit 0; fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 30); do alive "$pid" || break; sleep 1; done
    if alive "$pid"; then echo "still running after 30s: SIGKILL"; kill -KILL "$pid"; fi
    rm -f "$pidfile"
    echo "server: stopped"
    ;;
  logs)
    exec tail -n 200 -f "$MLX_SERVER_RUN_DIR/server.log"
    ;;
  *)
    echo "usage: $0 status|stop|logs" >&2
    exit 2
    ;;
esac
