#!/usr/bin/env bash
# `make cluster`: a demo cluster on this machine. 3 etcd members (client ports 23791-23793)
# and 3 registry-svc servers (API ports 11341, 11351, 11361; data ports 11342, 11352,
# 11362), each with its own data dir under $CLUSTER_DIR (default: a new temp dir). Prints
# the URLs and the admin token, then runs until Ctrl-C, which stops everything. If any
# member or server exits meanwhile, it says which and stops the rest (exit status 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${CLUSTER_DIR:-$(mktemp -d /tmp/registry-svc-cluster.XXXXXX)}
mkdir -p "$ROOT"
PIDS=()
cleanup() { trap - INT TERM EXIT; kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'cleanup; exit 0' INT TERM  # Ctrl-C: the way to stop it
trap cleanup EXIT

PEERS="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "m$i" --data-dir "$ROOT/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$PEERS" --initial-cluster-state new --initial-cluster-token registry-svc-demo \
    --auto-compaction-mode revision --auto-compaction-retention 100000 \
    --logger zap --log-level warn >"$ROOT/etcd$i.log" 2>&1 &
  PIDS+=($!)
done
ETCD="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"
for _ in $(seq 100); do
  curl -sf -X POST -d '{}' http://127.0.0.1:23791/v3/maintenance/status >/dev/null 2>&1 && break
  sleep 0.2
done
for i in 1 2 3; do
  if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null; then
    echo "etcd member m$i exited (ports 2379$i/2380$i taken?): $(tail -c 400 "$ROOT/etcd$i.log")" >&2
    exit 1
  fi
done

api_port() { echo $((11331 + 10 * $1)); }  # server N's API port; its data port is the next one

start_server() {  # start_server N
  local port pid
  port=$(api_port "$1")
  "$PY" -m registry_svc serve --port "$port" --data-port $((port + 1)) --data-dir "$ROOT/server$1" \
    --etcd "$ETCD" >"$ROOT/server$1.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server $1 exited while starting: $(tail -c 600 "$ROOT/server$1.log")" >&2
      exit 1
    fi
    # /version is served by the API port only (a data port answers /health too).
    curl -sf "http://127.0.0.1:$port/version" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server $1 did not start; see $ROOT/server$1.log" >&2
  exit 1
}

start_server 1
# The first server on an empty prefix creates the admin token; the others get a copy.
for i in 2 3; do mkdir -p "$ROOT/server$i"; cp "$ROOT/server1/admin.token" "$ROOT/server$i/"; done
start_server 2
start_server 3

echo "etcd:        $ETCD"
echo "servers:     http://127.0.0.1:$(api_port 1) http://127.0.0.1:$(api_port 2) http://127.0.0.1:$(api_port 3)"
echo "admin token: $(cat "$ROOT/server1/admin.token")"
echo "data, logs:  $ROOT"
echo "try:         OB_TOKEN=\$(cat $ROOT/server1/admin.token) .venv/bin/oo --url http://127.0.0.1:$(api_port 2) node list"
echo "Ctrl-C stops the cluster."
set +e
wait -n "${PIDS[@]}"
code=$?
set -e
for i in "${!PIDS[@]}"; do
  if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
    name=$( ((i < 3)) && echo "etcd member m$((i + 1))" || echo "server $((i - 2)) ($ROOT/server$((i - 2)).log)")
    echo "$name exited (status $code); stopping the cluster" >&2
  fi
done
exit 1
