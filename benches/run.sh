#!/usr/bin/env bash
# Standard load scenarios (issue 7) and strict-vs-relaxed (issue 3), against wedsync, the bare
# relay and, in the same run, @y/websocket-server@0.1.1 and @hocuspocus/server@3.4 installed
# from npm into a temp dir (nothing of theirs is committed). One server at a time; every run is
# bounded in count and time and stops by itself. Loopback only.
#
# Usage: bash benches/run.sh [SCENARIO...]
#   scenarios: s1 s2 s3 s4 s5 s6 durability   (default: s1 s3 s5 durability)
# Env: OUT (results dir, default target/bench-results/DATE), PEERS=0 to skip the npm peers,
#      S5_CONNS (default 19000), BENCH_THREADS (default 1), DUR (measured seconds, default 10).
# Writes OUT/results.jsonl (one JSON line per run, as printed by wedsync-bench) and
# OUT/table.md. Needs: cargo, node >= 20 + npm (for the peers), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATE=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-results/$DATE}
PEERS=${PEERS:-1}
S5_CONNS=${S5_CONNS:-19000}
THREADS=${BENCH_THREADS:-1}
DUR=${DUR:-10}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(s1 s3 s5 durability)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
TMP=$(mktemp -d /tmp/wedsync-bench.XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

cargo build --release --bins >&2
BIN=$ROOT/target/release
PORT=18300

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(free -h | awk '/Mem:/ {print $2}')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "open files: $(ulimit -n)"
  echo "commit: $(git rev-parse --short HEAD)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

if [ "$PEERS" = 1 ]; then
  echo "installing peers into $TMP/peers" >&2
  mkdir -p "$TMP/peers"
  (cd "$TMP/peers" && echo '{"name":"peers","private":true,"type":"module"}' > package.json &&
    npm install --no-audit --no-fund --loglevel=error \
      @y/websocket-server@0.1.1 yjs@13 @hocuspocus/server@3.4 >&2)
  cat > "$TMP/peers/hocuspocus.mjs" <<'EOF'
import { Server } from '@hocuspocus/server'
const server = new Server({ port: Number(process.env.PORT), address: '127.0.0.1', quiet: true })
server.listen()
EOF
fi

# start_server KIND -> sets SERVER_PID, URL, PROTO
start_server() {
  local kind=$1
  PORT=$((PORT + 1))
  URL=ws://127.0.0.1:$PORT
  PROTO=yws
  case $kind in
    wedsync-strict|wedsync-relaxed)
      rm -rf "$TMP/data"
      # The load generator opens up to 19,000 connections from a few loopback addresses:
      # lift the production connection caps (8192 total, 512 per IP) for the benchmark.
      printf '[limits]\nmax_connections = 20000\nmax_connections_per_ip = 20000\nupdate_rate = 100000\nupdate_burst = 200000\n' > "$TMP/bench.toml"
      "$BIN/wedsync" serve --listen 127.0.0.1:$PORT --data-dir "${DATA_DIR:-$TMP/data}" \
        --config "$TMP/bench.toml" --durability "${kind#wedsync-}" > "$OUT/$kind.log" 2>&1 &
      ;;
    bare-relay)
      "$BIN/bare-relay" 127.0.0.1:$PORT > "$OUT/$kind.log" 2>&1 &
      ;;
    y-websocket-server)
      (cd "$TMP/peers" && HOST=127.0.0.1 PORT=$PORT exec node node_modules/@y/websocket-server/src/server.js) \
        > "$OUT/$kind.log" 2>&1 &
      ;;
    hocuspocus)
      (cd "$TMP/peers" && PORT=$PORT exec node hocuspocus.mjs) > "$OUT/$kind.log" 2>&1 &
      PROTO=hocuspocus
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$kind did not start" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  sleep 1
}

# bench SCENARIO KIND ARGS... : one generator run against the running server.
bench() {
  local scenario=$1 kind=$2
  shift 2
  echo "== $scenario $kind $*  (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  local line
  line=$(timeout 600 "$BIN/wedsync-bench" --url "$URL" --proto "$PROTO" --server-pid "$SERVER_PID" \
    --threads "$THREADS" --label "$scenario $kind" "$@" || echo '{"error":"bench failed"}')
  line=$(echo "$line" | tail -1)
  echo "$line" | sed "s/^{/{\"scenario\":\"$scenario\",\"server\":\"$kind\",\"args\":\"$*\",\"load1\":\"$(cut -d' ' -f1 /proc/loadavg)\",/" >> "$RESULTS"
  echo "$line" >&2
}

# run_on KINDS -- SCENARIO ARGS...: fresh server per run.
run_on() {
  local scenario=$1
  shift
  local kinds=()
  while [ "$1" != "--" ]; do kinds+=("$1"); shift; done
  shift
  for kind in "${kinds[@]}"; do
    start_server "$kind"
    bench "$scenario" "$kind" "$@"
    stop_server
  done
}

ALL=(wedsync-strict bare-relay)
[ "$PEERS" = 1 ] && ALL+=(y-websocket-server hocuspocus)

for s in "${SCENARIOS[@]}"; do
  case $s in
    s1) run_on s1 "${ALL[@]}" -- --conns 1000 --rooms 100 --writers 1 --rate 5 --duration "$DUR" --warmup 3 ;;
    s2) run_on s2 "${ALL[@]}" -- --conns 10000 --rooms 1000 --writers 1 --rate 2 --duration "$DUR" --warmup 5 --src-ips 4 ;;
    s3) run_on s3 "${ALL[@]}" -- --conns 500 --rooms 1 --writers 5 --rate 10 --duration "$DUR" --warmup 3 ;;
    s4) run_on s4 "${ALL[@]}" -- --conns 1000 --rooms 10 --writers 5 --rate 2 --ramp --ramp-factor 1.4 --step-secs 5 --p99-bound-ms 50 --warmup 3 ;;
    s5) run_on s5 "${ALL[@]}" -- --conns "$S5_CONNS" --rooms 1000 --writers 0 --hold 5 --src-ips 8 --connect-concurrency 512 ;;
    s6)
      # Cold start: 1,000 stored documents of 100 KB, then one client per document.
      rm -rf "$TMP/cold"
      "$BIN/wedsync-bench" --seed-dir "$TMP/cold" --seed-docs 1000 --seed-kib 100 --room-prefix cold \
        | tee -a "$OUT/seed.json" >&2
      t0=$(date +%s.%N)
      DATA_DIR=$TMP/cold start_server wedsync-strict
      until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.05; done
      t1=$(date +%s.%N)
      echo "{\"scenario\":\"s6\",\"server\":\"wedsync-strict\",\"start_to_ready_secs\":$(printf "%.3f" "$(echo "$t1 - $t0" | bc)")}" >> "$RESULTS"
      bench s6 wedsync-strict --conns 1000 --rooms 1000 --writers 0 --hold 1 --room-prefix cold
      stop_server
      ;;
    durability)
      for mode in wedsync-strict wedsync-relaxed; do
        start_server "$mode"
        bench durability-s1 "$mode" --conns 1000 --rooms 100 --writers 1 --rate 5 --duration "$DUR" --warmup 3
        stop_server
        start_server "$mode"
        bench durability-s3 "$mode" --conns 500 --rooms 1 --writers 5 --rate 10 --duration "$DUR" --warmup 3
        stop_server
        start_server "$mode"
        bench durability-ramp "$mode" --conns 1000 --rooms 10 --writers 5 --rate 2 --ramp --ramp-factor 1.4 --step-secs 5 --p99-bound-ms 50 --warmup 3
        stop_server
      done
      ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
python3 "$ROOT/benches/table.py" "$RESULTS" > "$OUT/table.md"
cat "$OUT/table.md"
echo "results: $OUT" >&2
