#!/usr/bin/env bash
# Accept throughput of the release binary with and without [admin], in one
# run, alternating (ABBA) and waiting for both queues to drain between runs;
# both relays deliver to Postfix's smtp-sink. Prints one JSON line per run
# (rate = accepted messages/s) and the admin relay's own counters.
#   cargo build --release && scripts/bench-admin-overhead.sh
set -u
BIN=${BIN:-target/release/smarthost}
SMTPLOAD=${SMTPLOAD:-../shared/bench/smtpload.py}
W=$(mktemp -d /tmp/admin-bench.XXXX)
COUNT=${COUNT:-3000}; REPEATS=${REPEATS:-3}
/usr/sbin/smtp-sink -u nobody -c 127.0.0.1:26200 1000 > $W/sink.log 2>&1 &
SINK=$!
P1=; P2=
# Every process started here is stopped, even when interrupted.
trap 'kill $SINK $P1 $P2 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
mk() { # name port admin
  mkdir -p $W/$1
  cat > $W/$1/c.toml <<T
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:$2"
tls = "starttls"
require_tls = false
[access]
relay_networks = ["127.0.0.0/8"]
[queue]
path = "spool"
[[upstream]]
name = "sink"
address = "127.0.0.1:26200"
tls = "none"
$3
T
}
mk plain 26201 ""
mk admin 26202 $'[admin]\naddress = "127.0.0.1:26203"'
RUST_LOG=warn $BIN serve --config $W/plain/c.toml 2> $W/plain/log & P1=$!
RUST_LOG=warn $BIN serve --config $W/admin/c.toml 2> $W/admin/log & P2=$!
sleep 1
drained() { for i in $(seq 600); do [ "$(find $W/plain/spool/msg $W/admin/spool/msg -type f 2>/dev/null | wc -l)" -eq 0 ] && return; sleep 0.1; done; echo "not drained"; }
for r in $(seq $REPEATS); do
  order="plain:26201 admin:26202"; [ $((r % 2)) -eq 0 ] && order="admin:26202 plain:26201"
  for t in $order; do
    drained
    n=${t%%:*}; port=${t##*:}
    out=$(timeout 300 python3 $SMTPLOAD load --addr 127.0.0.1:$port --count $COUNT --sessions 8 --reuse --size 1024 --time-limit 240)
    echo "$r $n $out"
  done
done
curl -s 127.0.0.1:26203/metrics | grep -E "^smarthost_(messages_accepted|messages_delivered|accept_latency_seconds_(sum|count))"
