#!/usr/bin/env bash
# One s2 run (10,000 conns, 1,000 rooms, 1 writer per room at 2 upd/s, 10 s after 5 s warm-up)
# against BINDIR/wedsync on PORT, printing the generator figures. Env: SRVARGS (extra server
# flags, e.g. --durability relaxed), METRICS=1 (print the store-flush histogram after the run),
# RENICE=N (renice the server's `wedsync-store` thread to N once it listens).
# Usage: bash s2probe.sh BINDIR PORT   (do not pipe it into head: the server must be stopped)
B=$1; PORT=$2
DATA=$(mktemp -d /tmp/wsprobe.XXXX)
printf '[limits]\nmax_connections = 20000\nmax_connections_per_ip = 20000\nupdate_rate = 100000\nupdate_burst = 200000\n' > $DATA/bench.toml
$B/wedsync serve --listen 127.0.0.1:$PORT --data-dir $DATA/data --config $DATA/bench.toml ${SRVARGS:-} > $DATA/log 2>&1 &
P=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
if [ -n "${RENICE:-}" ]; then
  for t in /proc/$P/task/*; do
    [ "$(cat $t/comm)" = wedsync-store ] && renice -n "$RENICE" -p "$(basename $t)" >/dev/null
  done
fi
$B/wedsync-bench --url ws://127.0.0.1:$PORT --server-pid $P --threads 1 --conns ${CONNS:-10000} --rooms ${ROOMS:-1000} --writers 1 --rate 2 --duration 10 --warmup 5 --src-ips 4 ${EXTRA:-} 2>$DATA/bench.err > $DATA/bench.json
python3 - $DATA/bench.json <<'PY'
import json,sys
d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(' '.join(f'{k}={d.get(k)}' for k in ['ready','connect_failed','closed_unexpectedly','p50_ms','p99_ms','max_ms','server_cpu_pct','server_cpu_us_per_delivery','bench_cpu_pct','lost']))
PY
[ -n "${METRICS:-}" ] && curl -s 127.0.0.1:$PORT/metrics | grep -E "flush_seconds_(sum|count)|appends_per_round_(sum|count)" | tr '\n' ' '; echo
kill -TERM $P; wait $P; grep -v INFO $DATA/log | tail -3; tail -3 $DATA/bench.err; rm -rf $DATA
