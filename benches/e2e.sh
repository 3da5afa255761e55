#!/usr/bin/env bash
# End to end on loopback: each example service in release mode, with and
# without auth (EXAMPLE_NO_AUTH=1), loaded by wrk. Rounds are interleaved;
# the table gives medians. Bounded: E2E_SECONDS per run (default 5),
# E2E_ROUNDS rounds (default 3), 3 frameworks × 2 modes.
#
# Server CPU per request = (utime + stime of the server over the run, from
# /proc/PID/stat) ÷ requests served: steadier than wall-clock req/s on a
# noisy machine. The server is pinned to core 0 and wrk to core 1 where
# there are two cores.
#
# Where perf is installed, a profiled run per framework also gives the share
# of the server's CPU spent in our code (E2E_PROFILE=0 skips it).
#
#   bash benches/e2e.sh            # prints markdown tables
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${E2E_SECONDS:-5}
ROUNDS=${E2E_ROUNDS:-3}
CONNECTIONS=${E2E_CONNECTIONS:-32}
PORT=${E2E_PORT:-18480}

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p auth-examples --examples
BIN_DIR="$(pwd)/target/release/examples"

if [ "$(nproc)" -ge 2 ]; then SERVER_CPU="taskset -c 0"; LOAD_CPU="taskset -c 1"; else SERVER_CPU=""; LOAD_CPU=""; fi
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
RESULTS="$WORK/results"
: > "$RESULTS"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_case() { # framework mode round
    local fw=$1 mode=$2 round=$3 pid key out requests p99 rps before after
    local dir="$WORK/$fw"
    mkdir -p "$dir"
    local no_auth=0
    [ "$mode" = none ] && no_auth=1
    (cd "$dir" && EXAMPLE_NO_AUTH=$no_auth BIND="127.0.0.1:$PORT" \
        exec $SERVER_CPU "$BIN_DIR/${fw}_service" >/dev/null 2>&1) &
    pid=$!
    SERVER_PID=$pid
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && [ -s "$dir/data/.api_key" ] && break
        sleep 0.05
    done
    key=$(cat "$dir/data/.api_key")
    # Warm up, then measure.
    $LOAD_CPU wrk -t1 -c"$CONNECTIONS" -d1s -H "X-Api-Key: $key" "http://127.0.0.1:$PORT/api/v1/items" >/dev/null
    before=$(cpu_ticks "$pid")
    local perf_pid=""
    if [ "$round" = profile ]; then
        perf record -q -e cpu-clock -F 2000 -p "$pid" -o "$dir/perf.data" \
            -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    out=$($LOAD_CPU wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
        -H "X-Api-Key: $key" "http://127.0.0.1:$PORT/api/v1/items")
    after=$(cpu_ticks "$pid")
    [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    SERVER_PID=""
    if echo "$out" | grep -q "Non-2xx"; then
        echo "$fw/$mode: wrk saw non-2xx answers" >&2
        echo "$out" >&2
        exit 1
    fi
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    local cpu_ns
    cpu_ns=$(awk -v t=$((after - before)) -v hz="$TICKS" -v n="$requests" 'BEGIN {printf "%.0f", t * 1e9 / hz / n}')
    if [ "$round" = profile ]; then
        # Share of the server's samples (user and kernel) in our crates'
        # functions and the SHA-256 they call. Inlined code is counted where
        # it landed, so this is a lower bound.
        perf report -i "$dir/perf.data" --no-children --stdio -g none --sort sym 2>/dev/null |
            awk -v f="$fw" '/^ +[0-9.]+%/ {
                    p = $1 + 0
                    if ($0 ~ /auth_(core|axum|actix|warp)::|sha2::|subtle::/) auth += p
                    if ($0 ~ /sha2::/) sha += p
                } END { printf "%s %.2f %.2f\n", f, auth, sha }' >> "$WORK/profile"
        return
    fi
    echo "$fw $mode $round $rps $p99 $cpu_ns" >> "$RESULTS"
    echo "  $fw/$mode round $round: $rps req/s, p99 $p99, server CPU $cpu_ns ns/request" >&2
}

for round in $(seq 1 "$ROUNDS"); do
    for fw in axum actix warp; do
        for mode in auth none; do
            run_case "$fw" "$mode" "$round"
        done
    done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
pick() { awk -v f="$1" -v m="$2" -v c="$3" '$1 == f && $2 == m {print $c}' "$RESULTS"; }
to_ms() { sed -E 's/([0-9.]+)us/\1 0.001/; s/([0-9.]+)ms/\1 1/; s/([0-9.]+)s$/\1 1000/' | awk '{printf "%.3f\n", $1 * $2}'; }

echo
echo "| framework | req/s without auth | req/s with auth | ratio | p99 without (ms) | p99 with (ms) | server CPU/request without (ns) | with (ns) | added (ns) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for fw in axum actix warp; do
    rn=$(pick $fw none 4 | median); ra=$(pick $fw auth 4 | median)
    pn=$(pick $fw none 5 | to_ms | median); pa=$(pick $fw auth 5 | to_ms | median)
    cn=$(pick $fw none 6 | median); ca=$(pick $fw auth 6 | median)
    awk -v f=$fw -v rn="$rn" -v ra="$ra" -v pn="$pn" -v pa="$pa" -v cn="$cn" -v ca="$ca" \
        'BEGIN {printf "| %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f |\n", f, rn, ra, ra / rn, pn, pa, cn, ca, ca - cn}'
done
echo
echo "$ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s per case, $CONNECTIONS connections, medians."

# Where perf is available: one profiled run with auth per framework.
if command -v perf >/dev/null && [ "${E2E_PROFILE:-1}" != 0 ]; then
    : > "$WORK/profile"
    for fw in axum actix warp; do run_case "$fw" auth profile; done
    echo
    echo "| framework | auth code's share of server CPU (perf samples) | of which SHA-256 |"
    echo "|---|---:|---:|"
    awk '{printf "| %s | %.2f%% | %.2f%% |\n", $1, $2, $3}' "$WORK/profile"
fi
