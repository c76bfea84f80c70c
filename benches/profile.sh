#!/usr/bin/env bash
# Profiles the release relay under smtp-source load, relaying to Postfix's
# smtp-sink, all on loopback; see benches/profile.md for what each mode says.
#
#   benches/profile.sh MODE [COUNT] [SESSIONS] [SIZE]
#
# MODE:
#   run          the load only: wall time, the relay's CPU per message and its
#                peak PSS/RSS (every mode reports these; sampled every 100 ms)
#   strace       strace -f -c attached to the relay for the load: syscalls
#   strace-log   strace -f -tt -T (every call, timed) for the load: use a small
#                COUNT and SESSIONS 1 to read one message's sequence
#   perf-stat    perf stat attached for the load: software counters and
#                syscall tracepoints (counts without strace's slowdown), and
#                system-wide ext4 journal commits (other processes' too)
#   perf-record  perf record -g (cpu-clock, dwarf call graphs) attached for the load
#   callgrind    the relay under valgrind --tool=callgrind, collecting from the
#                start of the load on (use COUNT ~200): instruction counts in
#                user space, free of the machine's noise
# COUNT (2000) messages of SIZE (1024) bytes over SESSIONS (20) parallel
# sessions, one new connection per message (smtp-source's default).
#
# Environment: BIN (target/release/smarthost), OUT (/tmp/smarthost-profile),
# RELAY_PORT (2700), SINK_PORT (2726), TLS (unset; 1.3 or 1.2: the load comes
# from the shared bench's python loader, ../shared/bench/smtpload.py, with
# STARTTLS on every connection, since smtp-source has none). Needs postfix (smtp-source, smtp-sink),
# strace, perf or valgrind as the mode asks. Loopback only; the load is bounded
# (smtp-source under `timeout`, the drain wait at most 60 s); everything it
# starts is stopped by PID on exit.
set -euo pipefail

MODE=${1:?usage: profile.sh run|strace|strace-log|perf-stat|perf-record|callgrind [COUNT] [SESSIONS] [SIZE]}
COUNT=${2:-2000}
SESSIONS=${3:-20}
SIZE=${4:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/smarthost}
OUT=${OUT:-/tmp/smarthost-profile}
RELAY_PORT=${RELAY_PORT:-2700}
SINK_PORT=${SINK_PORT:-2726}
export PATH="$PATH:/usr/sbin:/sbin"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

listening() { ss -ltn "sport = :$1" | grep -q LISTEN; }
wait_listen() {
    for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2
    exit 1
}
sink_count() { grep -ao 'mesg=[0-9]*' "$OUT/sink.out" 2>/dev/null | tail -1 | cut -d= -f2 || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for port in "$RELAY_PORT" "$SINK_PORT"; do
    if listening "$port"; then echo "port $port is taken" >&2; exit 1; fi
done
rm -rf "$OUT/spool"
mkdir -p "$OUT"
cat > "$OUT/smarthost.toml" <<EOF
hostname = "smarthost.prof.invalid"
[[listener]]
address = "127.0.0.1:$RELAY_PORT"
tls = "starttls"
require_tls = false
[access]
relay_networks = ["127.0.0.0/8"]
[limits]
max_connections_per_ip = 1000
[queue]
path = "$OUT/spool"
[[upstream]]
name = "sink"
address = "127.0.0.1:$SINK_PORT"
tls = "none"
EOF

smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1000 > "$OUT/sink.out" 2>&1 &
PIDS+=($!)
wait_listen "$SINK_PORT"

if [ "$MODE" = callgrind ]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
        "$BIN" serve --config "$OUT/smarthost.toml" 2> "$OUT/relay.log" &
    RELAY=$!
    PIDS+=("$RELAY")
    for _ in $(seq 600); do listening "$RELAY_PORT" && break; sleep 0.1; done
else
    "$BIN" serve --config "$OUT/smarthost.toml" 2> "$OUT/relay.log" &
    RELAY=$!
    PIDS+=("$RELAY")
fi
wait_listen "$RELAY_PORT"

TOOL=
JBD2=
case $MODE in
run) ;;
callgrind) callgrind_control -i on "$RELAY" ;;
strace)
    strace -f -c -o "$OUT/strace.txt" -p "$RELAY" &
    TOOL=$!
    ;;
strace-log)
    strace -f -tt -T -o "$OUT/strace-log.txt" -p "$RELAY" &
    TOOL=$!
    ;;
perf-stat)
    events=task-clock,context-switches,cpu-migrations,page-faults
    for call in fsync fdatasync openat rename unlink write writev read close statx \
        sendto recvfrom futex sched_yield epoll_wait connect accept4; do
        events+=,syscalls:sys_enter_$call
    done
    perf stat -e "$events" -o "$OUT/perf-stat.txt" -p "$RELAY" &
    TOOL=$!
    perf stat -a -e jbd2:jbd2_start_commit,jbd2:jbd2_end_commit \
        -o "$OUT/perf-stat-jbd2.txt" &
    JBD2=$!
    ;;
perf-record)
    perf record -e cpu-clock -F 1999 --call-graph dwarf,32768 \
        -o "$OUT/perf.data" -p "$RELAY" 2> "$OUT/perf-record.log" &
    TOOL=$!
    ;;
*) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
[ -n "$TOOL" ] && sleep 1   # let the tool attach to every thread

# Peak PSS and RSS of the relay while the load runs, sampled every 100 ms.
( peak_pss=0; peak_rss=0
  while kill -0 "$RELAY" 2>/dev/null; do
      read -r pss rss < <(awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {print p+0, r+0}' \
          "/proc/$RELAY/smaps_rollup" 2>/dev/null || echo "0 0")
      [ "$pss" -gt "$peak_pss" ] && peak_pss=$pss
      [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
      echo "$peak_pss $peak_rss" > "$OUT/memory.peak"
      sleep 0.1
  done ) &
MEM=$!
PIDS+=("$MEM")
base=$(sink_count); base=${base:-0}
cpu0=$(cpu_ticks "$RELAY")
t0=$(date +%s.%N)
if [ -n "${TLS:-}" ]; then
    timeout 300 python3 "${SMTPLOAD:-$ROOT/../shared/bench/smtpload.py}" load \
        --addr "127.0.0.1:$RELAY_PORT" --tls "$TLS" --sessions "$SESSIONS" \
        --count "$COUNT" --size "$SIZE" --time-limit 240 > "$OUT/load.out"
else
    timeout 300 smtp-source -s "$SESSIONS" -m "$COUNT" -l "$SIZE" \
        -f a@example.com -t b@example.net "127.0.0.1:$RELAY_PORT"
fi
t_accept=$(date +%s.%N)
for _ in $(seq 600); do
    got=$(sink_count); got=${got:-0}
    [ $((got - base)) -ge "$COUNT" ] && break
    sleep 0.1
done
t_e2e=$(date +%s.%N)
cpu1=$(cpu_ticks "$RELAY")

for t in $TOOL $JBD2; do
    kill -INT "$t"
    wait "$t" || true
done
kill "$MEM" 2>/dev/null || true
read -r peak_pss peak_rss < "$OUT/memory.peak" || true
kill -TERM "$RELAY"
wait "$RELAY" || true

hz=$(getconf CLK_TCK)
awk -v n="$COUNT" -v d=$((got - base)) -v a="$t_accept" -v e="$t_e2e" -v s="$t0" \
    -v c=$((cpu1 - cpu0)) -v hz="$hz" -v pss="${peak_pss:-0}" -v rss="${peak_rss:-0}" 'BEGIN {
    printf "delivered %d/%d; accept %.2f s (%.0f msg/s); end to end %.2f s (%.0f msg/s); relay CPU %.2f ms/msg; peak PSS %.1f MB, RSS %.1f MB\n",
        d, n, a - s, n / (a - s), e - s, d / (e - s), 1000 * c / hz / n, pss / 1024, rss / 1024 }' | tee "$OUT/summary-$MODE.txt"
echo "relay warnings/errors: $(grep -c -E 'WARN|ERROR' "$OUT/relay.log" || true); queued left: $(find "$OUT/spool/msg" -name '*.json' | wc -l)"
