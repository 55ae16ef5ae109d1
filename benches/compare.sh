#!/usr/bin/env bash
# Before/after comparison of two wedsync builds on the same machine in one run, with figures that
# move less than latency on a shared machine: server CPU time (perf stat task-clock, and
# utime+stime per thread name from /proc), context switches (a thread hand-off costs two),
# user-space instructions (callgrind), and RSS per idle connection. Runs alternate between the
# two builds, so both see the same machine load.
#
# Usage: bash benches/compare.sh OLD_BINDIR NEW_BINDIR [what...]
#   OLD_BINDIR/NEW_BINDIR hold `wedsync` and `wedsync-bench` (copies of target/release of each
#   commit). what: s1 s2 s3 s4 rss cg (default: s1 s3 rss cg). Env: ROUNDS (default 2), RSS_CONNS (19000).
# Prints one line per run; raw files go to OUT (default target/compare/DATE).
# Needs: perf (software events are enough), valgrind (for cg).
set -uo pipefail
OLD=$1 NEW=$2
shift 2
WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(s1 s3 rss cg)
ROUNDS=${ROUNDS:-2}
RSS_CONNS=${RSS_CONNS:-19000}
OUT=${OUT:-$(pwd)/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PORT=${PORT:-18900}  # base port; each server takes the next one (set it apart from a concurrent run)

# start BINDIR LABEL [WRAPPER...]: starts `wedsync serve` (strict, benchmark limits) and sets
# SPID (the server) and WPID (the process to wait for).
start() {
  local bindir=$1 label=$2
  shift 2
  PORT=$((PORT + 1))
  DATA=$(mktemp -d /tmp/wedsync-compare.XXXXXX)
  printf '[limits]\nmax_connections = 20000\nmax_connections_per_ip = 20000\nupdate_rate = 100000\nupdate_burst = 200000\n' > "$DATA/bench.toml"
  "$@" "$bindir/wedsync" serve --listen 127.0.0.1:$PORT --data-dir "$DATA/data" \
    --config "$DATA/bench.toml" > "$OUT/$label.log" 2>&1 &
  WPID=$!
  for _ in $(seq 600); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
  done
  SPID=$(pgrep -n -f "^$bindir/wedsync serve --listen 127.0.0.1:$PORT" || echo $WPID)
}

stop() {
  kill -TERM "$SPID" 2>/dev/null
  wait "$WPID" 2>/dev/null
  rm -rf "$DATA"
}

# threads LABEL: context switches and CPU ticks per thread name, read just before the stop.
threads() {
  for t in /proc/$SPID/task/*; do
    echo "$(tr " " "_" < "$t/comm") $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{n = $1; sub(/-[0-9]+$/, "", n); cs[n] += $2; cpu[n] += $3; tcs += $2; tcpu += $3}
    END {printf "ctxsw=%d cpu_ticks=%d |", tcs, tcpu; for (k in cs) printf " %s: %d cs, %d ticks;", k, cs[k], cpu[k]}'
}

field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(' '.join(f'{k}={d.get(k)}' for k in sys.argv[1:]))" "$@"; }

load_run() {
  local scenario=$1
  shift
  for r in $(seq "$ROUNDS"); do
    for side in old new; do
      local bindir=$OLD
      [ $side = new ] && bindir=$NEW
      local label=$scenario-$side-$r
      start "$bindir" "$label" perf stat -e task-clock,context-switches -o "$OUT/$label.perf" --
      "$bindir/wedsync-bench" --url ws://127.0.0.1:$PORT --server-pid "$SPID" --threads 1 "$@" > "$OUT/$label.json" 2>/dev/null
      local th
      th=$(threads)
      stop
      local clock
      clock=$(awk '/task-clock/ {print $1}' "$OUT/$label.perf")
      echo "$label task_clock_ms=$clock $(field sent_total delivered_total lost duplicated p50_ms p99_ms server_cpu_us_per_delivery < "$OUT/$label.json") $th"
    done
  done
}

for w in "${WHAT[@]}"; do
  case $w in
    s1) load_run s1 --conns 1000 --rooms 100 --writers 1 --rate 5 --duration 10 --warmup 3 ;;
    s2) load_run s2 --conns 10000 --rooms 1000 --writers 1 --rate 2 --duration 10 --warmup 5 --src-ips 4 ;;
    s3) load_run s3 --conns 500 --rooms 1 --writers 5 --rate 10 --duration 10 --warmup 3 ;;
    s4)
      # Saturation ramp (as benches/run.sh s4): prints every step (deliveries/s, p99, server CPU).
      for r in $(seq "$ROUNDS"); do
        for side in old new; do
          bindir=$OLD
          [ $side = new ] && bindir=$NEW
          start "$bindir" s4-$side-$r
          "$bindir/wedsync-bench" --url ws://127.0.0.1:$PORT --server-pid "$SPID" --threads 1 --conns 1000 --rooms 10 \
            --writers 5 --rate 2 --ramp --ramp-factor 1.4 --step-secs 5 --p99-bound-ms 50 --warmup 3 > "$OUT/s4-$side-$r.json" 2>/dev/null
          stop
          python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(sys.argv[2], ' | '.join(f\"{s['deliveries_per_sec']:.0f}/s p99 {s['p99_ms']:.1f} ms cpu {s['server_cpu_pct']:.0f}%\" for s in d.get('steps', [])))" "$OUT/s4-$side-$r.json" "s4-$side-$r load $(cut -d' ' -f1 /proc/loadavg)"
        done
      done
      ;;
    rss)
      for side in old new; do
        bindir=$OLD
        [ $side = new ] && bindir=$NEW
        start "$bindir" rss-$side
        "$bindir/wedsync-bench" --url ws://127.0.0.1:$PORT --server-pid "$SPID" --conns "$RSS_CONNS" --rooms 1000 \
          --writers 0 --hold 5 --src-ips 8 --connect-concurrency 512 > "$OUT/rss-$side.json" 2>/dev/null
        stop
        echo "rss-$side $(field ready connect_secs server_rss_kib_before server_rss_kib server_rss_per_conn_kib < "$OUT/rss-$side.json")"
      done
      ;;
    cg)
      # Whole-process user-space instructions under callgrind for a light load (callgrind runs
      # the server ~50x slower) and for the same connections idle for as long; the difference
      # divided by the updates sent is the instruction cost of an update (kernel time excluded).
      # Idle runs wait for timers, so they can differ between builds by a few million.
      for side in old new; do
        bindir=$OLD
        [ $side = new ] && bindir=$NEW
        for kind in work idle; do
          args=(--conns 100 --rooms 10 --writers 1 --rate 5 --duration 10 --warmup 2)
          [ $kind = idle ] && args=(--conns 100 --rooms 10 --writers 0 --hold 12)
          start "$bindir" cg-$side-$kind valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$side-$kind.out"
          "$bindir/wedsync-bench" --url ws://127.0.0.1:$PORT --server-pid "$SPID" "${args[@]}" > "$OUT/cg-$side-$kind.json" 2>/dev/null
          stop
          ir=$(awk '/^totals:/ {print $2}' "$OUT/cg-$side-$kind.out")
          # valgrind runs one thread at a time, so sled's spin-waits (`sled::lazy::Lazy::deref`)
          # burn a scheduling-dependent number of instructions: reported apart, and excluded.
          spin=$(callgrind_annotate --auto=no --threshold=100 "$OUT/cg-$side-$kind.out" 2>/dev/null |
            grep "sled::lazy::Lazy" | awk '{gsub(",", "", $1); s += $1} END {print s + 0}')
          echo "cg-$side-$kind Ir=$ir sled_spin_Ir=$spin Ir_without_spin=$((ir - spin)) $(field sent_total delivered_total lost < "$OUT/cg-$side-$kind.json")"
        done
      done
      ;;
    *) echo "unknown: $w" >&2; exit 2 ;;
  esac
done
echo "raw: $OUT" >&2
