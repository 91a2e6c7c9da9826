#!/usr/bin/env bash
# What metrics collection costs the proxy (see BENCHMARKS.md, "Metrics
# store against Prometheus"): `ferry serve` (release build, shipped
# defaults) with one deployed service, measured with the proxy benchmark's
# keep-alive load (`wrk -t2 -c50 --latency`), with `--scrape-interval 1s`
# (the daemon, its data plane, the host and the instance collected every
# second) against `--scrape-interval 1h` (collection effectively off).
#
#   benches/metrics-proxy-cost.sh               # 5 rounds of 8 s per setting, about 3 minutes
#   ROUNDS=7 DURATION=10s benches/metrics-proxy-cost.sh
#
# One daemon at a time (so the other setting's collection does not run
# during a measurement): each run starts a fresh daemon in its own session
# and data dir, deploys the service, warms up for 2 s, measures, and stops
# everything with `ferry shutdown`. The order of the two settings
# alternates every round. Everything listens on 127.0.0.1 only.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-50}
PORT=${PORT:-18411}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/ferry-metrics-proxy-cost}
OUT=$WORK/results.csv

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx
fi
NGINX_BIN=$(command -v nginx)
(cd "$ROOT" && cargo build --release --bin ferry)
FERRY_CLI=$ROOT/target/release/ferry
TCK=$(getconf CLK_TCK)

rm -rf "$WORK" && mkdir -p "$WORK"
cat >"$WORK/instance.tmpl" <<EOF
worker_processes 2;
error_log $WORK/instance-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "hello from revision @VERSION@\n"; } }
}
EOF
cat >"$WORK/instance.sh" <<EOF
#!/bin/sh
sed -e "s/@PORT@/\$PORT/" -e "s/@VERSION@/\$1/" "$WORK/instance.tmpl" >"$WORK/instance-\$PORT.conf"
exec "$NGINX_BIN" -c "$WORK/instance-\$PORT.conf" -g "pid $WORK/instance-\$PORT.pid; daemon off;"
EOF
chmod +x "$WORK/instance.sh"
cat >"$WORK/ferry.toml" <<EOF
[services.plain]
command = ["$WORK/instance.sh", "{version}"]
listen = "127.0.0.1:$PORT"
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run ROUND INTERVAL: one daemon, one measurement.
run() {
    local round=$1 interval=$2 data="$WORK/data-$1-$2" out="$WORK/wrk-$1-$2.txt"
    export FERRY_DATA_DIR=$data
    setsid "$FERRY_CLI" serve --api-addr 127.0.0.1:0 --scrape-interval "$interval" \
        >"$WORK/daemon-$round-$interval.log" 2>&1 </dev/null &
    local cp=$!
    for _ in $(seq 100); do [ -s "$data/api.json" ] && break; sleep 0.1; done
    (cd "$WORK" && "$FERRY_CLI" deploy plain --version 1 >/dev/null)
    for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    wrk -t2 -c10 -d2s "http://127.0.0.1:$PORT/" >/dev/null
    local dp cp0 dp0
    dp=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$data/dataplane.json" | head -1)
    cp0=$(cpu_ticks "$cp") dp0=$(cpu_ticks "$dp")
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/" >"$out" 2>&1 || true
    local cp_s dp_s rps p99
    cp_s=$(awk -v a="$cp0" -v b="$(cpu_ticks "$cp")" -v t="$TCK" 'BEGIN {printf "%.2f", (b - a) / t}')
    dp_s=$(awk -v a="$dp0" -v b="$(cpu_ticks "$dp")" -v t="$TCK" 'BEGIN {printf "%.2f", (b - a) / t}')
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) sub(/ms$/, "", v); else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; print v}' "$out")
    "$FERRY_CLI" shutdown >/dev/null 2>&1 || kill -INT "$cp" 2>/dev/null || true
    wait "$cp" 2>/dev/null || true
    echo "$round,$interval,$rps,$p99,$cp_s,$dp_s" >>"$OUT"
    printf '  round %s  --scrape-interval %-3s %10s req/s  p99 %6s ms  control plane %5s CPU s, data plane %5s CPU s\n' \
        "$round" "$interval" "$rps" "$p99" "$cp_s" "$dp_s"
}

echo "round,interval,rps,p99_ms,control_plane_cpu_s,data_plane_cpu_s" >"$OUT"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order=(1s 1h); else order=(1h 1s); fi
    for interval in "${order[@]}"; do run "$round" "$interval"; done
done

median() { sort -n | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F, -v i="$1" -v k="$2" 'NR > 1 && $2 == i {print $k}' "$OUT" | median; }
echo
echo "==> medians over $ROUNDS rounds ($DURATION, $CONNECTIONS keep-alive connections)"
printf '| %-17s | %9s | %7s | %17s | %14s |\n' "--scrape-interval" "req/s" "p99 ms" "control plane CPU" "data plane CPU"
printf '|%s|\n' "-------------------|-----------|---------|-------------------|----------------"
for i in 1s 1h; do
    printf '| %-17s | %9.0f | %7s | %15s s | %12s s |\n' "$i" "$(col "$i" 3)" "$(col "$i" 4)" "$(col "$i" 5)" "$(col "$i" 6)"
done
awk -F, 'NR > 1 {r[$1, $2] = $3} END {for (k = 1; k <= '"$ROUNDS"'; k++) printf "round %d: 1s / 1h = %.3f\n", k, r[k, "1s"] / r[k, "1h"]}' "$OUT"
echo "raw results: $OUT"
