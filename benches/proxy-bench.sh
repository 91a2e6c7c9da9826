#!/usr/bin/env bash
# Ferry's proxy against nginx and HAProxy on this machine (see BENCHMARKS.md).
# Two Ferry contenders: `ferry` is the proxy alone (the bench-proxy example),
# `daemon` is what users run: `ferry serve` with its shipped defaults, a
# service deployed through it (its instance is the same static nginx
# upstream), and for the split a canary held at 10 % with analysis on.
#
#   benches/proxy-bench.sh              # 5 rounds of 10 s runs (about 10 minutes)
#   ROUNDS=7 DURATION=15s benches/proxy-bench.sh
#
# Everything listens on 127.0.0.1 only. Contenders alternate inside every
# round; the table reports medians over the rounds. Needs root for apt-get
# (skipped when wrk, nginx and haproxy are already installed).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}   # wrk threads
IDLE=${IDLE:-5000}      # idle keep-alive connections for the memory measurement
WORKERS=${WORKERS:-2}   # worker processes/threads of every proxy (and the upstream)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/ferry-bench}
OUT=${OUT:-$WORK/results.csv}

# Ports (127.0.0.1): upstreams, then each contender's plain and split listener.
UP1=18081 UP2=18082
FERRY=18101 FERRY_SPLIT=18102
DAEMON=18111 DAEMON_SPLIT=18112
NGINX=18201 NGINX_SPLIT=18202
HAPROXY=18301 HAPROXY_SPLIT=18302

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need haproxy || ! need python3; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx haproxy python3
fi
NGINX_BIN=$(command -v nginx)
HAPROXY_BIN=$(command -v haproxy)

echo "==> building Ferry's proxy and ferry (release)"
(cd "$ROOT" && cargo build --release -p ferry-proxy --example bench-proxy && cargo build --release --bin ferry)
FERRY_BIN=$ROOT/target/release/examples/bench-proxy
FERRY_CLI=$ROOT/target/release/ferry

# Stop what a previous (interrupted) run may have left, then start afresh.
for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
sleep 0.5
rm -rf "$WORK" && mkdir -p "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT

# Many short connections: let TIME_WAIT ports be reused (best effort).
sysctl -qw net.ipv4.tcp_tw_reuse=1 2>/dev/null || true

# ---------------------------------------------------------------- upstream
cat >"$WORK/upstream.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/upstream.pid;
error_log $WORK/upstream-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server { listen 127.0.0.1:$UP1; location / { return 200 "hello from revision 1\n"; } }
    server { listen 127.0.0.1:$UP2; location / { return 200 "hello from revision 2\n"; } }
}
EOF
"$NGINX_BIN" -c "$WORK/upstream.conf" -e "$WORK/upstream-error.log"

# ------------------------------------------------------------------- nginx
cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream rev1  { server 127.0.0.1:$UP1; keepalive 64; }
    upstream split { server 127.0.0.1:$UP1 weight=9; server 127.0.0.1:$UP2 weight=1; keepalive 64; }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    server { listen 127.0.0.1:$NGINX;       location / { proxy_pass http://rev1; } }
    server { listen 127.0.0.1:$NGINX_SPLIT; location / { proxy_pass http://split; } }
}
EOF
"$NGINX_BIN" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"

# ----------------------------------------------------------------- HAProxy
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:$HAPROXY
    default_backend rev1
frontend split
    bind 127.0.0.1:$HAPROXY_SPLIT
    default_backend split
backend rev1
    server r1 127.0.0.1:$UP1
backend split
    balance roundrobin
    server r1 127.0.0.1:$UP1 weight 90
    server r2 127.0.0.1:$UP2 weight 10
EOF
"$HAPROXY_BIN" -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"

# ------------------------------------------------------------------- Ferry
# nginx and HAProxy daemonize (setsid), so each gets its own session and, with
# the scheduler's autogroups (kernel.sched_autogroup_enabled=1), its own fair
# share of the CPUs. Ferry runs the same way, as `ferry serve` would under a
# service manager: started from this script's session it would share one
# scheduling group with wrk and get half the CPU the others get.
setsid "$FERRY_BIN" "127.0.0.1:$FERRY" "127.0.0.1:$FERRY_SPLIT" "127.0.0.1:$UP1" "127.0.0.1:$UP2" "$WORKERS" \
    >"$WORK/ferry.log" 2>&1 </dev/null &
PIDS+=($!)
echo $! >"$WORK/ferry.pid"

# ------------------------------------------------------- Ferry's daemon
# `ferry serve` (shipped defaults) in its own session, like the others. Its
# services' instances are nginx serving the same static answer as the
# upstream above, started by Ferry on the port it assigns.
cat >"$WORK/instance.tmpl" <<EOF
worker_processes $WORKERS;
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
# One instance: nginx on the port Ferry assigned (\$PORT), in the foreground.
sed -e "s/@PORT@/\$PORT/" -e "s/@VERSION@/\$1/" "$WORK/instance.tmpl" >"$WORK/instance-\$PORT.conf"
exec "$NGINX_BIN" -c "$WORK/instance-\$PORT.conf" -g "pid $WORK/instance-\$PORT.pid; daemon off;"
EOF
chmod +x "$WORK/instance.sh"
cat >"$WORK/ferry.toml" <<EOF
[services.plain]
command = ["$WORK/instance.sh", "{version}"]
listen = "127.0.0.1:$DAEMON"

[services.split]
command = ["$WORK/instance.sh", "{version}"]
listen = "127.0.0.1:$DAEMON_SPLIT"
[services.split.deploy]
strategy = "canary"
steps = [{ weight = 10 }, { pause = "manual" }]
[services.split.analysis]
checks = [{ metric = "error_rate", max = 0.05 }]
EOF
export FERRY_DATA_DIR=$WORK/daemon-data
setsid "$FERRY_CLI" serve --api-addr 127.0.0.1:0 >"$WORK/daemon.log" 2>&1 </dev/null &
PIDS+=($!)
echo $! >"$WORK/daemon.pid"
for _ in $(seq 100); do [ -s "$FERRY_DATA_DIR/api.json" ] && break; sleep 0.1; done
(cd "$WORK" && "$FERRY_CLI" deploy plain --version 1 >/dev/null && "$FERRY_CLI" deploy split --version 1 >/dev/null \
    && "$FERRY_CLI" deploy split --version 2 --detach >/dev/null)
for _ in $(seq 200); do
    "$FERRY_CLI" status split -o json | grep -q '"phase":"awaiting-approval"' && break
    sleep 0.1
done

for port in $UP1 $UP2 $FERRY $FERRY_SPLIT $DAEMON $DAEMON_SPLIT $NGINX $NGINX_SPLIT $HAPROXY $HAPROXY_SPLIT; do
    for _ in $(seq 50); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" || { echo "port $port does not answer"; exit 1; }
done
# The split really splits (about 10 % from revision 2).
for port in $FERRY_SPLIT $DAEMON_SPLIT $NGINX_SPLIT $HAPROXY_SPLIT; do
    n=$(for _ in $(seq 200); do curl -s "http://127.0.0.1:$port/"; done | grep -c "revision 2" || true)
    echo "split check on :$port: $n/200 answers from revision 2"
done

# The processes of a contender (master and workers).
pids_of() {
    case $1 in
        ferry) cat "$WORK/ferry.pid" ;;
        # The control plane and the data plane (the proxies' process).
        daemon) cat "$WORK/daemon.pid"; sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$FERRY_DATA_DIR/dataplane.json" | head -1 ;;
        nginx) local m; m=$(cat "$WORK/nginx.pid"); echo "$m"; pgrep -P "$m" ;;
        haproxy) cat "$WORK/haproxy.pid"; pgrep -P "$(cat "$WORK/haproxy.pid")" || true ;;
    esac
}
# status_kb FIELD CONTENDER: a /proc/PID/status field (VmHWM: peak RSS,
# VmRSS: RSS now), in kB, summed over all the contender's processes.
status_kb() {
    local total=0 kb
    for pid in $(pids_of "$2"); do
        kb=$(awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}
CONTENDERS=(direct ferry daemon nginx haproxy)
port_of() { case $1 in direct) echo $UP1 ;; ferry) echo $FERRY ;; daemon) echo $DAEMON ;; nginx) echo $NGINX ;; haproxy) echo $HAPROXY ;; esac; }
split_port_of() { case $1 in ferry) echo $FERRY_SPLIT ;; daemon) echo $DAEMON_SPLIT ;; nginx) echo $NGINX_SPLIT ;; haproxy) echo $HAPROXY_SPLIT ;; esac; }

# Memory per idle client connection, measured first, on fresh processes
# (allocators keep what they grew to, so later deltas would read ~0): RSS of
# all the proxy's processes before and while IDLE keep-alive connections,
# each after one request, sit open.
IDLE_REPORT=()
for c in ferry daemon nginx haproxy; do
    before=$(status_kb VmRSS "$c")
    python3 "$ROOT/benches/idle-conns.py" "$(port_of "$c")" "$IDLE" 3 >"$WORK/idle-$c.txt" &
    holder=$!
    for _ in $(seq 600); do [ -s "$WORK/idle-$c.txt" ] && break; sleep 0.1; done
    sleep 1
    during=$(status_kb VmRSS "$c")
    wait "$holder" || true
    IDLE_REPORT+=("$(printf '  %-8s %6s kB before, %6s kB with %s idle connections (%s answered): %5.2f kB each' \
        "$c" "$before" "$during" "$IDLE" "$(cat "$WORK/idle-$c.txt")" \
        "$(awk -v a="$before" -v b="$during" -v n="$IDLE" 'BEGIN {printf "%.2f", (b - a) / n}')")")
done
printf '%s\n' "memory per idle keep-alive connection (VmRSS, all processes of the proxy):" "${IDLE_REPORT[@]}"

# ------------------------------------------------------------------- runs
# to_ms VALUE: wrk's "812.00us" / "1.23ms" / "1.02s" in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'; }

run() { # scenario contender port [extra wrk args]
    local scenario=$1 contender=$2 port=$3; shift 3
    local out="$WORK/wrk-$scenario-$contender-$round.txt"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "http://127.0.0.1:$port/" >"$out" 2>&1 || true
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { gsub(",", "", $i); s += $i }} END {print s + 0}' "$out")
    echo "$round,$scenario,$contender,$rps,$p50,$p99,$errors" >>"$OUT"
    printf '  %-10s %-8s %10s req/s  p50 %8s ms  p99 %8s ms  errors %s\n' "$scenario" "$contender" "$rps" "$p50" "$p99" "$errors"
}

echo "round,scenario,contender,rps,p50_ms,p99_ms,errors" >"$OUT"

# Warm up every contender (connection pools, page cache).
for c in "${CONTENDERS[@]}"; do wrk -t1 -c10 -d2s "http://127.0.0.1:$(port_of "$c")/" >/dev/null; done

for round in $(seq "$ROUNDS"); do
    echo "==> round $round/$ROUNDS"
    # Rotate the order each round so no contender always runs first.
    n=${#CONTENDERS[@]}
    order=("${CONTENDERS[@]:$(( (round - 1) % n ))}" "${CONTENDERS[@]:0:$(( (round - 1) % n ))}")
    for c in "${order[@]}"; do run keepalive "$c" "$(port_of "$c")"; done
    for c in "${order[@]}"; do run close "$c" "$(port_of "$c")" -H "Connection: close"; done
    for c in "${order[@]}"; do [ "$c" = direct ] || run split "$c" "$(split_port_of "$c")"; done
done

echo
echo "==> medians over $ROUNDS rounds ($DURATION each, $CONNECTIONS connections, $WORKERS workers per proxy)"
median() { sort -n | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F, -v s="$1" -v c="$2" -v k="$3" 'NR > 1 && $2 == s && $3 == c {print $k}' "$OUT" | median; }
printf '| %-9s | %-8s | %9s | %8s | %8s | %8s | %8s | %6s |\n' scenario proxy "req/s" "p50 ms" "p99 ms" "vs nginx" "vs direct" errors
printf '|%s|\n' "-----------|----------|-----------|----------|----------|----------|----------|--------"
for s in keepalive close split; do
    nginx_rps=$(col "$s" nginx 4)
    direct_rps=$(col "$s" direct 4)
    for c in "${CONTENDERS[@]}"; do
        [ "$s" = split ] && [ "$c" = direct ] && continue
        rps=$(col "$s" "$c" 4)
        errs=$(awk -F, -v s="$s" -v c="$c" 'NR > 1 && $2 == s && $3 == c {e += $7} END {print e + 0}' "$OUT")
        vs_nginx=$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN {printf "%.2f", a / b}')
        vs_direct=$( [ "$s" != split ] && awk -v a="$rps" -v b="$direct_rps" 'BEGIN {printf "%.2f", a / b}' || echo "-")
        printf '| %-9s | %-8s | %9.0f | %8s | %8s | %8s | %8s | %6s |\n' "$s" "$c" "$rps" "$(col "$s" "$c" 5)" "$(col "$s" "$c" 6)" "$vs_nginx" "$vs_direct" "$errs"
    done
done
echo
echo "peak RSS (VmHWM, all processes of the proxy, after all runs):"
for c in ferry daemon nginx haproxy; do printf '  %-8s %8s kB\n' "$c" "$(status_kb VmHWM "$c")"; done
printf '%s\n' "memory per idle keep-alive connection (measured before the runs):" "${IDLE_REPORT[@]}"
echo "raw results: $OUT"
