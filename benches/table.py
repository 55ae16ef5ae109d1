"""Turns benches/run.sh results (JSON lines from wedsync-bench) into a markdown table."""
import json
import sys


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| scenario | server | conns | p50 ms | p99 ms | max ms | deliveries/s | lost | dup | "
      "closed | server CPU % | server µs/delivery | bench CPU % | server RSS KiB | RSS/conn KiB | "
      "connect s | load1 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r.get("sustained") or r
    if "steps" in r and not r.get("sustained"):
        m = r["steps"][0] if r["steps"] else r
    extra = ""
    if "start_to_ready_secs" in r:
        print(f"| {r['scenario']} | {r['server']} | | | | | | | | | | | | | | "
              f"start→ready {r['start_to_ready_secs']} s | |")
        continue
    if "steps" in r:
        extra = f" (ramp: {len(r['steps'])} steps, last p99 {fmt(r['steps'][-1].get('p99_ms'))} ms)"
    print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        r.get("scenario"), r.get("server") + extra, r.get("ready"),
        fmt(m.get("p50_ms")), fmt(m.get("p99_ms")), fmt(m.get("max_ms")),
        fmt(m.get("deliveries_per_sec"), 0), r.get("lost", "-"), r.get("duplicated", "-"),
        r.get("closed_unexpectedly", "-"), fmt(m.get("server_cpu_pct"), 1),
        fmt(m.get("server_cpu_us_per_delivery"), 1), fmt(m.get("bench_cpu_pct"), 1),
        fmt(m.get("server_rss_kib") or r.get("server_rss_kib"), 0),
        fmt(r.get("server_rss_per_conn_kib")), fmt(r.get("connect_secs")), r.get("load1")))
