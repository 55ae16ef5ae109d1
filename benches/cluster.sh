#!/usr/bin/env bash
# Cluster-mode benchmarks (issue 8): cross-node fan-out next to a single node under the same
# load, and idle connections held by three nodes together. Starts its own redis-server (a free
# port, a temp dir, AOF everysec) and wedsync nodes; loopback only; everything stops by itself.
#
# Usage: bash benches/cluster.sh [SCENARIO...]
#   c1: 3,000 conns / 300 rooms / 1 writer / 5 upd/s: single node (sled, strict) vs 3 nodes
#   c2: hot room, 500 conns / 1 room / 5 writers x 10/s: single node vs 3 nodes
#   c3: idle connections, C3_CONNS per node (default 15000) on 3 nodes, one generator each
#   c4: c1's load on 3 nodes with [cluster] read_coalesce = 0 and then 0.002 (the default):
#       Redis CPU vs cross-node latency
#   (default: c1 c2 c3)
# Env: OUT (default target/bench-results/cluster-DATE), DUR (measured seconds, default 10).
# Writes OUT/results.jsonl (wedsync-bench JSON lines, labelled) and OUT/nodes.txt (RSS/CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATE=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-results/cluster-$DATE}
DUR=${DUR:-10}
C3_CONNS=${C3_CONNS:-15000}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(c1 c2 c3)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
TMP=$(mktemp -d /tmp/wedsync-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --bins >&2
BIN=$ROOT/target/release
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "redis: $(redis-server --version)"
  echo "commit: $(git rev-parse --short HEAD)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {
  REDIS_PORT=$(free_port)
  mkdir -p "$TMP/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis" --save "" \
    --appendonly yes --appendfsync everysec --logfile "$OUT/redis.log" &
  REDIS_PID=$!
  PIDS+=($REDIS_PID)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

printf '[limits]\nmax_connections = 20000\nmax_connections_per_ip = 20000\nupdate_rate = 100000\nupdate_burst = 200000\n' > "$TMP/bench.toml"

# three_nodes LABEL CLUSTER_TOML_LINES bench-args...: one run on three fresh cluster nodes
three_nodes() {
  local label=$1 extra=$2; shift 2
  start_redis
  cat "$TMP/bench.toml" > "$TMP/bench-cluster.toml"
  printf '[cluster]\n%s\n' "$extra" >> "$TMP/bench-cluster.toml"
  local urls="" pids=()
  for n in a b c; do
    read -r pid port < <(NODE_CONFIG="$TMP/bench-cluster.toml" start_node "$n" --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "$n")
    PIDS+=("$pid")
    urls="$urls${urls:+,}ws://127.0.0.1:$port"; pids+=("$pid")
  done
  bench "$label" --url "$urls" --server-pid "${pids[0]}" "$@"
  node_stats "$label" "${pids[@]}"
  node_stats "$label redis" "$REDIS_PID"
  stop_all
}

# start_node NAME [--redis ...] -> prints "PID PORT" (runs in a subshell: callers add the
# PID to PIDS themselves)
start_node() {
  local name=$1; shift
  local port; port=$(free_port)
  "$BIN/wedsync" serve --listen 127.0.0.1:"$port" --data-dir "$TMP/data-$name" \
    --config "${NODE_CONFIG:-$TMP/bench.toml}" "$@" > "$OUT/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { echo "$pid $port"; return; }
    sleep 0.1
  done
  echo "node $name did not start" >&2; exit 1
}

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  rm -rf "$TMP"/data-* "$TMP/redis"
}

node_stats() { # label pid...
  local label=$1; shift
  for p in "$@"; do
    echo "$label pid=$p rss_kib=$(awk '/VmRSS/ {print $2}' /proc/"$p"/status) cpu_ticks=$(awk '{print $14+$15}' /proc/"$p"/stat)"
  done >> "$OUT/nodes.txt"
}

bench() { # label args...
  local label=$1; shift
  "$BIN/wedsync-bench" --label "$label" --duration "$DUR" --warmup 5 "$@" | tee -a "$RESULTS"
}

single_vs_cluster() { # scenario-name bench-args...
  local sc=$1; shift
  read -r pid port < <(start_node single); PIDS+=("$pid")
  bench "$sc single" --url "ws://127.0.0.1:$port" --server-pid "$pid" "$@"
  node_stats "$sc single" "$pid"
  stop_all
  three_nodes "$sc 3 nodes" "" "$@"
}

for sc in "${SCENARIOS[@]}"; do
  case $sc in
    c1) single_vs_cluster c1 --conns 3000 --rooms 300 --writers 1 --rate 5 --src-ips 4 ;;
    c2) single_vs_cluster c2 --conns 500 --rooms 1 --writers 5 --rate 10 ;;
    c3)
      start_redis
      gens=()
      for n in a b c; do
        read -r pid port < <(start_node "$n" --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "$n")
        PIDS+=("$pid")
        "$BIN/wedsync-bench" --label "c3 idle node $n" --url "ws://127.0.0.1:$port" \
          --server-pid "$pid" --conns "$C3_CONNS" --rooms 1000 --writers 0 --hold 5 \
          --src-ips 8 --room-prefix idle >> "$TMP/c3-$n.jsonl" &
        gens+=($!)
      done
      for g in "${gens[@]}"; do wait "$g"; done
      cat "$TMP"/c3-*.jsonl | tee -a "$RESULTS"
      stop_all
      ;;
    c4)
      for co in 0 0.002; do
        three_nodes "c4 3 nodes read_coalesce=$co" "read_coalesce = $co" \
          --conns 3000 --rooms 300 --writers 1 --rate 5 --src-ips 4
      done
      ;;
    *) echo "unknown scenario $sc" >&2; exit 2 ;;
  esac
done
echo "results: $RESULTS" >&2
