#!/usr/bin/env bash
# From a release that ran the proxies inside the daemon (e.g. 4df4a4a) to
# this build: the old daemon serves 3 instances, is stopped with SIGKILL or
# SIGTERM, and this build's `ferry serve` starts on the same data dir. A
# probe sends a request every 10 ms and reports what failed and the gap.
#
#   git worktree add --detach /tmp/prev 4df4a4a
#   (cd /tmp/prev && CARGO_TARGET_DIR=/tmp/prev-target cargo build --bin ferry)
#   cargo build --bin ferry
#   benches/from-previous-release.sh /tmp/prev-target/debug/ferry KILL
#   benches/from-previous-release.sh /tmp/prev-target/debug/ferry TERM
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: from-previous-release.sh OLD_FERRY_BINARY [KILL|TERM]} NEW=$ROOT/target/debug/ferry
shift
SIG=${1:-KILL}; set -- "$SIG"
D=/tmp/ferry-from-previous-$1; rm -rf $D; mkdir -p $D; cd $D
PORT=18551
cat > ferry.toml <<T
[services.web]
command = ["$OLD", "demo-app"]
instances = 3
listen = "127.0.0.1:$PORT"
env = { DEMO_VERSION = "{version}" }
[services.web.readiness]
http = "/health"
interval = "100ms"
T
export FERRY_DATA_DIR=$D/data
setsid $OLD serve --api-addr 127.0.0.1:0 > old.log 2>&1 < /dev/null &
OLDPID=$!
for _ in $(seq 100); do [ -s data/api.json ] && break; sleep 0.1; done
$OLD deploy web --version v1 > /dev/null || exit 1
PIDS_BEFORE=$($OLD status web -o json | python3 -c 'import json,sys; print(sorted(i["pid"] for i in json.load(sys.stdin)["instances"]))')
python3 - "$PORT" > probe.txt <<'P' &
import sys, time, urllib.request
port = sys.argv[1]; end = time.time() + 8; ok = fail = 0; first_fail = last_fail = None; t0 = time.time()
while time.time() < end:
    t = time.time() - t0
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read(); ok += 1
    except Exception:
        fail += 1; first_fail = first_fail if first_fail is not None else t; last_fail = t
    time.sleep(0.01)
print(f"ok={ok} failed={fail} gap={'none' if first_fail is None else f'{(last_fail - first_fail) * 1000:.0f} ms'}")
P
PROBE=$!
sleep 2
kill -$1 $OLDPID; wait $OLDPID 2>/dev/null
rm -f data/api.json
setsid $NEW serve --api-addr 127.0.0.1:0 > new.log 2>&1 < /dev/null &
for _ in $(seq 100); do [ -s data/api.json ] && break; sleep 0.1; done
wait $PROBE
echo "$1: $(cat probe.txt)"
PIDS_AFTER=$($NEW status web -o json | python3 -c 'import json,sys; print(sorted(i["pid"] for i in json.load(sys.stdin)["instances"]))')
echo "instances before $PIDS_BEFORE after $PIDS_AFTER"
$NEW history web -o json | python3 -c 'import json,sys; h=json.load(sys.stdin); print("history:", [(r["revision"], r["outcome"]) for r in h])'
$NEW status | head -2
$NEW shutdown --timeout 30s > /dev/null
