#!/usr/bin/env bash
# Black-box checks of the Docker image and the compose topology, from the host
# (issue 13). Builds the image (making the base images first with
# ../shared/docker/bases.sh when they are missing), then checks: image
# metadata and size, the non-root process binding port 25 without the
# unprivileged-port sysctl, health turning healthy, `docker stop` time and exit
# status, the spool surviving container replacement, the demo through a
# published port, and compose round-robin / failover / resume (with timings).
#
# Traffic goes only to ports published on 127.0.0.1 and to the containers'
# own private networks. Needs root (or the docker group), docker-compose and
# swaks. Not run by CI (.ci/run): it builds an image for minutes; run it by
# hand or through `SMARTHOST_DOCKER_TEST=1 cargo test --test docker`.
#   SMARTHOST_DOCKER_NO_BUILD=1   use the existing `smarthost` image
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=smarthost
P="smarthost-dt-$$"           # prefix of everything this run makes
COMPOSE_PROJECT="smarthostdt$$"
SHARED="${SMARTHOST_SHARED:-$(cd .. && pwd)/shared}"
WORK="$(mktemp -d)"
passed=0 failed=0

say() { echo "docker-test: $*" >&2; }
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

compose() { SMARTHOST_PORT="$COMPOSE_PORT" docker-compose -p "$COMPOSE_PROJECT" "$@"; }
scale() {
    SMARTHOST_SCALE_PORT="$SCALE_PORT" docker-compose -f deploy/scale-out/docker-compose.yml \
        -p "${COMPOSE_PROJECT}so" "$@"
}

cleanup() {
    set +e
    docker rm -f "$P-serve" "$P-relay1" "$P-relay2" "$P-sink" "$P-demo" >/dev/null 2>&1
    docker volume rm "$P-spool" >/dev/null 2>&1
    docker network rm "$P-net" >/dev/null 2>&1
    compose down -v --remove-orphans >/dev/null 2>&1
    scale down -v --remove-orphans >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

# Polls CMD (bounded: SECONDS_MAX, 0.5 s apart) until it succeeds.
eventually() { # SECONDS_MAX CMD...
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < until)) || return 1
        sleep 0.5
    done
}

health_is() { [[ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" == "$2" ]]; }

# A free loopback port for publishing (the kernel's choice, released at once).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One message through 127.0.0.1:PORT with STARTTLS; 0 when it got a 250.
send() { # PORT [SUBJECT]
    swaks --server 127.0.0.1 --port "$1" --tls --timeout 20 \
        --from sender@example.com --to rcpt@example.net \
        --header "Subject: ${2:-docker-test}" >"$WORK/swaks.log" 2>&1
}

# Messages a sink holds (its *.eml files).
count_in() { # CONTAINER DIR
    docker exec "$1" sh -c "ls $2 2>/dev/null | grep -c '\\.eml\$' || true"
}

command -v swaks >/dev/null || { say "swaks is needed (apt-get install swaks)"; exit 1; }
command -v docker-compose >/dev/null || { say "docker-compose is needed"; exit 1; }
docker info >/dev/null 2>&1 || { say "the Docker engine is not running"; exit 1; }

# --- build ------------------------------------------------------------------
if ! docker image inspect debian:bookworm-slim rust:1.95-bookworm >/dev/null 2>&1; then
    say "base images missing: $SHARED/docker/bases.sh"
    "$SHARED/docker/bases.sh"
fi
if [[ -z "${SMARTHOST_DOCKER_NO_BUILD:-}" ]]; then
    start=$(now)
    DOCKER_BUILDKIT=0 nice docker build -q -t "$IMAGE" . >/dev/null
    say "built $IMAGE in $(since "$start") s"
fi

# --- image metadata -----------------------------------------------------------
meta() { docker image inspect -f "$1" "$IMAGE"; }
check 'ENTRYPOINT ["smarthost"]' [ "$(meta '{{json .Config.Entrypoint}}')" = '["smarthost"]' ]
check 'CMD serve --config /etc/smarthost/smarthost.toml' \
    [ "$(meta '{{json .Config.Cmd}}')" = '["serve","--config","/etc/smarthost/smarthost.toml"]' ]
check 'USER smarthost' [ "$(meta '{{.Config.User}}')" = smarthost ]
check 'VOLUME /var/spool/smarthost' [ "$(meta '{{json .Config.Volumes}}')" = '{"/var/spool/smarthost":{}}' ]
check 'EXPOSE 25 465 587 8025' \
    [ "$(meta '{{json .Config.ExposedPorts}}')" = '{"25/tcp":{},"465/tcp":{},"587/tcp":{},"8025/tcp":{}}' ]
check 'HEALTHCHECK in exec form running the binary' \
    [ "$(meta '{{json .Config.Healthcheck.Test}}')" = '["CMD","smarthost","health","--config","/etc/smarthost/smarthost.toml"]' ]
size=$(meta '{{.Size}}')
base=$(docker image inspect -f '{{.Size}}' debian:bookworm-slim)
added=$(((size - base) / 1024 / 1024))
say "image $((size / 1024 / 1024)) MiB, debian:bookworm-slim $((base / 1024 / 1024)) MiB: adds $added MiB"
check "image adds at most 80 MiB to debian:bookworm-slim ($added MiB)" [ "$added" -le 80 ]

# --- the default config: non-root, port 25, healthy, docker stop -------------
# The unprivileged-port sysctl set back to the kernel default, so port 25 is
# bound through the binary's file capability alone.
SERVE_PORT=$(free_port)
docker run -d --name "$P-serve" --sysctl net.ipv4.ip_unprivileged_port_start=1024 \
    -p "127.0.0.1:$SERVE_PORT:25" "$IMAGE" >/dev/null
start=$(now)
if eventually 60 health_is "$P-serve" healthy; then
    ok "health turns healthy ($(since "$start") s)"
else
    bad "health turns healthy: $(docker inspect -f '{{json .State.Health}}' "$P-serve")"
fi
uid=$(docker exec "$P-serve" awk '/^Uid:/ { print $2 }' /proc/1/status)
check "PID 1 runs as a non-root user (uid $uid)" [ "$uid" != 0 ]
check "PID 1 is the smarthost binary" [ "$(docker exec "$P-serve" cat /proc/1/comm)" = smarthost ]
check "port 25 bound without root or the sysctl" eventually 10 docker exec "$P-serve" smarthost health --smtp 127.0.0.1:25
# The default relays only for the container itself: the host is refused at RCPT.
send "$SERVE_PORT" || true
check "default config refuses to relay for the host (554 5.7.1)" grep -q '^<~\* 554 5.7.1' "$WORK/swaks.log"
start=$(now)
docker stop "$P-serve" >/dev/null
stop_secs=$(since "$start")
code=$(docker inspect -f '{{.State.ExitCode}}' "$P-serve")
check "docker stop: exit status 0 ($code) within 5 s ($stop_secs s)" \
    awk -v c="$code" -v t="$stop_secs" 'BEGIN { exit !(c == 0 && t < 5) }'

# --- the spool survives container replacement --------------------------------
docker network create "$P-net" >/dev/null
gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$P-net")
mkdir -p "$WORK/conf"
cat >"$WORK/conf/smarthost.toml" <<EOF
hostname = "relay.docker-test"
[[listener]]
address = "0.0.0.0:25"
tls = "starttls"
[access]
relay_networks = ["127.0.0.0/8", "$gateway/32"]
[limits]
shutdown_grace = "8s"
[queue]
path = "/var/spool/smarthost"
retry_min = "2s"
retry_max = "5s"
connect_timeout = "3s"
[[upstream]]
name = "sink"
address = "$P-sink:25"
tls = "none"
EOF
chmod 755 "$WORK" "$WORK/conf"; chmod 644 "$WORK/conf/smarthost.toml"
relay() { # NAME PORT
    docker run -d --name "$1" --network "$P-net" -v "$WORK/conf:/etc/smarthost:ro" \
        -v "$P-spool:/var/spool/smarthost" -p "127.0.0.1:$2:25" "$IMAGE" >/dev/null
}
RELAY_PORT=$(free_port)
relay "$P-relay1" "$RELAY_PORT"
eventually 30 health_is "$P-relay1" healthy || bad "relay1 healthy"
sent=0
for i in 1 2 3; do send "$RELAY_PORT" "spool $i" && sent=$((sent + 1)); done
check "3 messages accepted while the upstream is down ($sent)" [ "$sent" = 3 ]
queued=$(docker exec "$P-relay1" smarthost queue list --config /etc/smarthost/smarthost.toml | tail -1)
check "3 queued in relay1 ($queued)" [ "$queued" = "3 message(s) queued" ]
start=$(now)
docker stop "$P-relay1" >/dev/null
check "relay1 stopped with exit status 0 ($(since "$start") s)" [ "$(docker inspect -f '{{.State.ExitCode}}' "$P-relay1")" = 0 ]
docker rm "$P-relay1" >/dev/null
docker run -d --name "$P-sink" --network "$P-net" "$IMAGE" sink --listen 0.0.0.0:25 --dir /var/spool/sink >/dev/null
relay "$P-relay2" "$RELAY_PORT"
start=$(now)
three() { [ "$(count_in "$P-sink" /var/spool/sink)" = 3 ]; }
if eventually 60 three; then
    ok "a replacement container on the same volume delivered all 3 ($(since "$start") s)"
else
    bad "replacement delivered $(count_in "$P-sink" /var/spool/sink) of 3"
fi
sleep 2
check "nothing delivered twice" three
docker rm -f "$P-relay2" "$P-sink" >/dev/null

# --- the demo through a published loopback port ------------------------------
DEMO_PORT=$(free_port)
docker run -d --rm --name "$P-demo" -p "127.0.0.1:$DEMO_PORT:2525" "$IMAGE" demo --listen 0.0.0.0:2525 >/dev/null
eventually 30 sh -c "docker logs $P-demo 2>&1 | grep -q 'Stop with Ctrl-C'" || bad "demo started"
nets=$(docker logs "$P-demo" 2>&1 | sed -n 's/^ *relaying for //p')
only_gateway() { [[ "$nets" =~ ^127\.0\.0\.0/8,\ ::1/128,\ [0-9.]+/32$ ]]; }
check "demo relays for loopback and the gateway /32 only ($nets)" only_gateway
sent=0
for i in 1 2 3 4; do send "$DEMO_PORT" "demo $i" && sent=$((sent + 1)); done
check "demo accepted 4 messages from the host over STARTTLS ($sent)" [ "$sent" = 4 ]
demo_split() {
    [ "$(count_in "$P-demo" smarthost-demo/upstream-eu)" = 2 ] &&
        [ "$(count_in "$P-demo" smarthost-demo/upstream-us)" = 2 ]
}
check "demo alternates between its sinks (2 and 2)" eventually 20 demo_split
docker stop "$P-demo" >/dev/null

# --- compose: round-robin, failover, resume ----------------------------------
COMPOSE_PORT=$(free_port)
compose up -d >/dev/null 2>&1
for s in relay upstream-eu upstream-us; do
    eventually 60 health_is "$(compose ps -q $s)" healthy || bad "compose $s healthy"
done
EU=$(compose ps -q upstream-eu)
US=$(compose ps -q upstream-us)
eu() { count_in "$EU" /var/spool/sink; }
us() { count_in "$US" /var/spool/sink; }
total() { echo $(($(eu) + $(us))); }
total_is() { [ "$(total)" = "$1" ]; }

sent=0
for i in 1 2 3 4 5 6; do send "$COMPOSE_PORT" "rr $i" && sent=$((sent + 1)); done
eventually 20 total_is 6 || true
check "compose: 6 sent, 3 to each region (eu $(eu), us $(us))" [ "$sent/$(eu)/$(us)" = "6/3/3" ]

start=$(now)
compose stop upstream-us >/dev/null 2>&1
say "upstream-us stopped in $(since "$start") s"
before=$(eu)
start=$(now)
sent=0
for i in 1 2 3 4; do send "$COMPOSE_PORT" "failover $i" && sent=$((sent + 1)); done
# retry_min is 10 s: within 5 s means no message waited for a retry.
if eventually 5 bash -c "[ \$(docker exec $EU sh -c 'ls /var/spool/sink | grep -c eml') = $((before + 4)) ]"; then
    ok "failover: all 4 went to upstream-eu at once ($(since "$start") s for 4 sends and deliveries)"
else
    bad "failover: eu got $(($(eu) - before)) of 4 within 5 s"
fi

compose start upstream-us >/dev/null 2>&1
start=$(now)
us_before=$(us)
resumed=""
# One message a second until upstream-us gets one: it is set aside after its
# failures (5 s, doubling) and tried last meanwhile.
for i in $(seq 1 60); do
    send "$COMPOSE_PORT" "resume $i" || true
    sleep 1
    if [ "$(us)" -gt "$us_before" ]; then resumed=$i; break; fi
done
if [ -n "$resumed" ]; then
    ok "round-robin resumed: upstream-us took message $resumed, $(since "$start") s after its start"
else
    bad "round-robin did not resume within 60 messages"
fi
eventually 60 health_is "$US" healthy || bad "upstream-us healthy again"
sent_total=$((6 + 4 + ${resumed:-60}))
eventually 20 total_is "$sent_total" || true
check "compose: nothing lost, nothing twice ($(total) delivered of $sent_total)" total_is "$sent_total"
start=$(now)
compose stop relay >/dev/null 2>&1
check "compose stop relay: exit 0 ($(since "$start") s)" \
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -q relay)")" = 0 ]

# --- scale-out: HAProxy (PROXY v2) in front of two relays --------------------
SCALE_PORT=$(free_port)
scale build haproxy >/dev/null 2>&1 || bad "build the haproxy image"
scale up -d --no-build >/dev/null 2>&1
for s in relay-1 relay-2 upstream-eu upstream-us; do
    eventually 60 health_is "$(scale ps -q $s)" healthy || bad "scale-out $s healthy"
done
R1=$(scale ps -q relay-1)
SEU=$(scale ps -q upstream-eu)
SUS=$(scale ps -q upstream-us)
delivered() { echo $(($(count_in "$SEU" /var/spool/sink) + $(count_in "$SUS" /var/spool/sink))); }
delivered_is() { [ "$(delivered)" = "$1" ]; }
accepted_by() { docker logs "$(scale ps -q "$1")" 2>&1 | grep -c 'message accepted' || true; }
send_all() { # N SUBJECT: sends N messages through HAProxy; prints how many got a 250
    local n=0
    for i in $(seq 1 "$1"); do send "$SCALE_PORT" "$2 $i" && n=$((n + 1)); done
    echo "$n"
}
eventually 20 send "$SCALE_PORT" "scale warm-up" || bad "haproxy passes mail"
expected=1
check "scale-out: 4 accepted through HAProxy" [ "$(send_all 4 scale)" = 4 ]
expected=$((expected + 4))
check "scale-out: both relays took mail (relay-1 $(accepted_by relay-1), relay-2 $(accepted_by relay-2))" \
    [ "$(accepted_by relay-1)" -ge 1 -a "$(accepted_by relay-2)" -ge 1 ]
check "scale-out: all delivered" eventually 20 delivered_is "$expected"
gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "${COMPOSE_PROJECT}so_scale-out")
received=$(docker exec "$SEU" sh -c 'cat /var/spool/sink/*.eml | grep -m1 "^Received: from"' || true)
check "Received shows the real client through PROXY v2 ($received)" \
    bash -c "[[ '$received' == *'[$gateway])'* ]]"
# A container on the private network, straight to a relay, without a PROXY header.
direct=$(docker exec "$SEU" bash -c 'exec 3<>/dev/tcp/relay-1/25; timeout 5 head -c 3 <&3' 2>/dev/null || true)
check "a direct connection without a PROXY header gets no banner (${direct:-nothing})" [ -z "$direct" ]

start=$(now)
scale stop relay-1 >/dev/null 2>&1
check "relay-1 stopped with exit status 0 ($(since "$start") s)" [ "$(docker inspect -f '{{.State.ExitCode}}' "$R1")" = 0 ]
for i in 1 2 3 4; do
    start=$(now)
    send "$SCALE_PORT" "one-down $i" && ok "relay-1 down: message $i accepted through relay-2 in $(since "$start") s" ||
        bad "relay-1 down: message $i refused"
done
expected=$((expected + 4))
check "relay-1 down: all delivered" eventually 20 delivered_is "$expected"

# Mail a stopped relay holds is delivered when it comes back.
scale start relay-1 >/dev/null 2>&1
eventually 60 health_is "$R1" healthy || bad "relay-1 healthy again"
scale stop upstream-eu upstream-us >/dev/null 2>&1
before1=$(accepted_by relay-1)
check "upstreams down: 6 accepted" [ "$(send_all 6 held)" = 6 ]
expected=$((expected + 6))
held=$(($(accepted_by relay-1) - before1))
scale stop relay-1 >/dev/null 2>&1
scale start upstream-eu upstream-us >/dev/null 2>&1
sleep 15
got=$(delivered)
check "with relay-1 stopped, all but its $held held messages delivered ($got of $expected)" \
    [ "$got" = $((expected - held)) -a "$held" -ge 1 ]
start=$(now)
scale start relay-1 >/dev/null 2>&1
if eventually 60 delivered_is "$expected"; then
    ok "relay-1 back: its $held held messages delivered ($(since "$start") s); nothing lost, nothing twice"
else
    bad "relay-1 back: $(delivered) of $expected delivered"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
