#!/usr/bin/env bash
# What a proxy upgrade costs the traffic going through it (see BENCHMARKS.md):
# Ferry's `ferry upgrade` against nginx's binary upgrade (USR2, then QUIT to
# the old master) and HAProxy's seamless reload (`-x` socket transfer,
# `-sf`), each in the middle of a wrk run through a service of 3 instances.
# Also Ferry's own restarts: SIGTERM of the control plane then `ferry serve`
# again, kill -9 of the control plane then `ferry serve` again, and kill -9 of
# the data plane (which Ferry replaces by itself), against kill -9 of an
# nginx worker (which its master replaces).
#
#   benches/upgrade-bench.sh                 # 5 rounds of 8 s runs per case
#   ROUNDS=3 DURATION=6s benches/upgrade-bench.sh
#
# Each run is wrk for DURATION with the event 3 s in; "errors" are wrk's
# socket errors (connect, read, write, timeout) plus non-2xx answers. Both
# loads: keep-alive (50 connections) and a new connection per request
# (`Connection: close`). Everything listens on 127.0.0.1 only.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-2}
AT=${AT:-3}             # seconds into each run when the event happens
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/ferry-upgrade-bench}
OUT=${OUT:-$WORK/results.csv}

UPS=(18401 18402 18403)
NGINX=18421 HAPROXY=18431 FERRY=18441

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need haproxy || ! need curl; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx haproxy curl
fi
NGINX_BIN=$(command -v nginx)
HAPROXY_BIN=$(command -v haproxy)

echo "==> building ferry (release)"
(cd "$ROOT" && cargo build --release --bin ferry)

for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
if [ -d "$WORK/data" ]; then FERRY_DATA_DIR=$WORK/data "$ROOT/target/release/ferry" shutdown --timeout 30s >/dev/null 2>&1 || true; fi
sleep 0.5
rm -rf "$WORK" && mkdir -p "$WORK"
# Two copies of the binary: each upgrade switches to the other path, so the
# processes really change binary.
cp "$ROOT/target/release/ferry" "$WORK/ferry-a"
cp "$ROOT/target/release/ferry" "$WORK/ferry-b"
FERRY_CLI=$WORK/ferry-a
export FERRY_DATA_DIR=$WORK/data
cleanup() {
    "$FERRY_CLI" shutdown --timeout 30s >/dev/null 2>&1 || true
    for f in "$WORK"/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT
sysctl -qw net.ipv4.tcp_tw_reuse=1 2>/dev/null || true

# ------------------------------------------------------------ the instances
# Static nginx servers: the upstreams of nginx and HAProxy, and (the same
# config, started by Ferry on the ports it assigns) Ferry's instances.
cat >"$WORK/instance.tmpl" <<EOF
worker_processes 1;
error_log $WORK/instance-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "hello\n"; } }
}
EOF
cat >"$WORK/instance.sh" <<EOF
#!/bin/sh
sed -e "s/@PORT@/\$PORT/" "$WORK/instance.tmpl" >"$WORK/instance-\$PORT.conf"
exec "$NGINX_BIN" -c "$WORK/instance-\$PORT.conf" -g "pid $WORK/instance-\$PORT.ipid; daemon off;"
EOF
chmod +x "$WORK/instance.sh"
for p in "${UPS[@]}"; do
    sed -e "s/@PORT@/$p/" "$WORK/instance.tmpl" >"$WORK/up-$p.conf"
    "$NGINX_BIN" -c "$WORK/up-$p.conf" -g "pid $WORK/up-$p.pid;"
done

# -------------------------------------------------------------------- nginx
cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream app { server 127.0.0.1:${UPS[0]}; server 127.0.0.1:${UPS[1]}; server 127.0.0.1:${UPS[2]}; keepalive 64; }
    server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
"$NGINX_BIN" -c "$WORK/nginx.conf"

# ------------------------------------------------------------------ HAProxy
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 8000
    nbthread $WORKERS
    stats socket $WORK/haproxy.sock mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$HAPROXY
    default_backend app
backend app
    balance roundrobin
    server a 127.0.0.1:${UPS[0]}
    server b 127.0.0.1:${UPS[1]}
    server c 127.0.0.1:${UPS[2]}
EOF
"$HAPROXY_BIN" -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"

# -------------------------------------------------------------------- Ferry
cat >"$WORK/ferry.toml" <<EOF
[services.app]
command = ["$WORK/instance.sh"]
instances = 3
listen = "127.0.0.1:$FERRY"
EOF
start_ferry() {
    setsid "$FERRY_CLI" serve --api-addr 127.0.0.1:0 >>"$WORK/daemon.log" 2>&1 </dev/null &
    echo $! >"$WORK/daemon.cpid"
    for _ in $(seq 200); do [ -s "$FERRY_DATA_DIR/api.json" ] && break; sleep 0.05; done
}
start_ferry
(cd "$WORK" && "$FERRY_CLI" deploy app --version 1 >/dev/null)

for port in $NGINX $HAPROXY $FERRY; do
    for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" || { echo "port $port does not answer"; exit 1; }
done

dp_pid() { sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$FERRY_DATA_DIR/dataplane.json" | head -1; }
cp_pid() { cat "$WORK/daemon.cpid"; }

# ------------------------------------------------------------------ events
# Each returns once the event has been set going; the run goes on.
ferry_upgrade() {
    local next=$WORK/ferry-b
    [ "$FERRY_CLI" = "$WORK/ferry-b" ] && next=$WORK/ferry-a
    "$FERRY_CLI" upgrade --binary "$next" >>"$WORK/events.log" 2>&1
    FERRY_CLI=$next
}
ferry_restart() { # SIGNAL: stop the control plane with it, start it again
    local pid; pid=$(cp_pid)
    kill "-$1" "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$FERRY_DATA_DIR/api.json"
    start_ferry
}
ferry_term_restart() { ferry_restart TERM; }
ferry_kill_cp() { ferry_restart KILL; }
ferry_kill_dp() {
    local pid; pid=$(dp_pid)
    [ -n "$pid" ] && [ "$pid" -gt 1 ] && kill -KILL "$pid"
}
nginx_upgrade() {
    local old; old=$(cat "$WORK/nginx.pid")
    kill -USR2 "$old"
    for _ in $(seq 100); do [ -s "$WORK/nginx.pid" ] && [ "$(cat "$WORK/nginx.pid")" != "$old" ] && break; sleep 0.02; done
    kill -QUIT "$old"
}
nginx_kill_worker() {
    local w; w=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)
    [ -n "$w" ] && [ "$w" -gt 1 ] && kill -KILL "$w"
}
haproxy_reload() {
    "$HAPROXY_BIN" -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid" -x "$WORK/haproxy.sock" -sf $(cat "$WORK/haproxy.pid")
}

to_ms() { awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'; }

run() { # case load port event
    local case=$1 load=$2 port=$3 event=$4 extra=()
    [ "$load" = close ] && extra=(-H "Connection: close")
    local out="$WORK/wrk-$case-$load-$round.txt"
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "${extra[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1 &
    local wrk_pid=$!
    sleep "$AT"
    $event
    wait "$wrk_pid" || true
    local requests errors p99 max
    requests=$(awk '/requests in/ {print $1}' "$out")
    errors=$(awk '/Non-2xx|Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { gsub(",", "", $i); s += $i }} END {print s + 0}' "$out")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    max=$(to_ms "$(awk '$1 == "Latency" {print $4}' "$out")")
    echo "$round,$case,$load,$requests,$errors,$p99,$max" >>"$OUT"
    printf '  %-22s %-10s %9s requests  %5s errors  p99 %8s ms  max %9s ms\n' "$case" "$load" "$requests" "$errors" "$p99" "$max"
    # Let the replaced processes finish before the next run.
    sleep 1
}

echo "round,case,load,requests,errors,p99_ms,max_ms" >"$OUT"
CASES=(
    "ferry-upgrade $FERRY ferry_upgrade"
    "nginx-binary-upgrade $NGINX nginx_upgrade"
    "haproxy-reload-x $HAPROXY haproxy_reload"
    "ferry-sigterm-restart $FERRY ferry_term_restart"
    "ferry-kill9-cp $FERRY ferry_kill_cp"
    "ferry-kill9-dataplane $FERRY ferry_kill_dp"
    "nginx-kill9-worker $NGINX nginx_kill_worker"
)
for round in $(seq "$ROUNDS"); do
    echo "==> round $round/$ROUNDS"
    for load in keepalive close; do
        for c in "${CASES[@]}"; do
            read -r name port event <<<"$c"
            run "$name" "$load" "$port" "$event"
        done
    done
done

echo
echo "==> medians over $ROUNDS rounds ($DURATION each, event at ${AT}s, $CONNECTIONS connections, 3 instances)"
median() { sort -n | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F, -v c="$1" -v l="$2" -v k="$3" 'NR > 1 && $2 == c && $3 == l {print $k}' "$OUT" | median; }
total() { awk -F, -v c="$1" -v l="$2" -v k="$3" 'NR > 1 && $2 == c && $3 == l {s += $k} END {print s + 0}' "$OUT"; }
printf '| %-22s | %-9s | %9s | %13s | %8s | %9s |\n' case load requests "errors (all)" "p99 ms" "max ms"
printf '|%s|\n' "------------------------|-----------|-----------|---------------|----------|-----------"
for load in keepalive close; do
    for c in "${CASES[@]}"; do
        name=${c%% *}
        printf '| %-22s | %-9s | %9s | %13s | %8s | %9s |\n' "$name" "$load" "$(col "$name" "$load" 4)" \
            "$(col "$name" "$load" 5) ($(total "$name" "$load" 5))" "$(col "$name" "$load" 6)" "$(col "$name" "$load" 7)"
    done
done
echo "raw results: $OUT"
