#!/usr/bin/env bash
# shellcheck disable=SC2016  # check() evals its single-quoted commands
# Self-test of send.sh against testserver.py on 127.0.0.1 (needs install.sh
# done, python3 and openssl). Checks: STARTTLS + cert verified against the
# test CA, BDAT used, bytes received == input with CRLF line ends (exim adds
# nothing when From/Date/Message-ID are present), wrong CA => exit 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d); srv=
trap '[ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$t"' EXIT
cd "$t"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=TestCA
ossl req -x509 -newkey rsa:2048 -nodes -keyout bad.key -out badca.pem -days 2 -subj /CN=OtherCA
ossl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=localhost
ossl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir out
python3 "$here/testserver.py" "$port" leaf.pem leaf.key out & srv=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

printf 'From: A <a@example.com>\nTo: b@example.net\nDate: Mon, 30 Nov 2026 12:00:00 +0000\nMessage-ID: <st@example.com>\nSubject: t\n\none\n.dot line\n.\n8bit: h\xc3\xa9llo\n' > msg
sed 's/$/\r/' msg > expected
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass+1)); echo "ok: $1"; else fail=$((fail+1)); echo "FAIL: $1"; fi; }
check "delivery exits 0"       '"$here/send.sh" "$port" ca.pem a@example.com b@example.net < msg'
check "server got BDAT over TLS" 'grep -q "\"tls\": true, \"method\": \"BDAT\"" out/msg1.json'
check "bytes unchanged (CRLF)" 'cmp -s out/msg1.eml expected'
check "wrong CA exits 1"       '! "$here/send.sh" "$port" badca.pem a@example.com b@example.net < msg 2>/dev/null'
check "nothing delivered with wrong CA" '[ ! -e out/msg2.eml ]'
echo "selftest: $pass passed, $fail failed"
[ "$fail" = 0 ]
