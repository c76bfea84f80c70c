#!/usr/bin/env bash
# Installs the real third-party SMTP peers that tests/peers.rs drives:
#   swaks (+ Net::SSLeay for its STARTTLS), openssl, ca-certificates, python3,
#   haproxy (a real PROXY protocol sender for tests/peers_access.rs),
#   postfix (only for smtp-sink, an upstream for tests/real_upstreams.rs;
#   installed as "No configuration", so no daemon runs and nothing binds
#   port 25), python3-aiosmtpd (a STARTTLS upstream, tests/peers/aiosmtpd),
#   Exim's binary alone under /opt/exim (tests/peers/exim/install.sh),
#   mount (losetup) + e2fsprogs (mkfs.ext4, e2fsck) for tests/disk_faults.rs,
#   strace (tests/syscall_order.rs watches the spool's fsync/rename order),
#   chromium (tests/admin.rs renders the admin page headless and screenshots
#   it), Python's prometheus-client (its text parser reads /metrics)
#   and python3-yaml (tests/kubernetes.rs reads deploy/kubernetes/ with it).
# Debian bookworm (or derivative), as root or via sudo. Idempotent: packages
# already present are not reinstalled and `apt-get update` runs only when
# something is missing. No daemon is started (policy-rc.d denies every start
# while we install) and no exim4 package is installed through dpkg, so postfix
# stays installable.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "$0: run as root (or install sudo)" >&2; exit 1; }
  exec sudo -E "$0" "$@"
fi
command -v apt-get >/dev/null || { echo "$0: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
packages=(swaks libnet-ssleay-perl libio-socket-ssl-perl openssl ca-certificates python3 haproxy
          postfix python3-aiosmtpd mount e2fsprogs strace chromium python3-yaml)

# Packages not yet installed (dpkg's "install ok installed" state).
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  # No maintainer script may start a service while we install (e.g. in a
  # container without systemd an init script would really run).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # Postfix as "No configuration": no main.cf is written, so even a start
  # (which policy-rc.d denies anyway) would not run a system MTA on port 25.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # --no-install-recommends: swaks' Recommends are not needed, and nothing
  # here may pull in another mail-transport-agent.
  install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  # Update the lists only when needed: a missing package unknown to them (a
  # fresh machine has none), or an install that fails on stale ones.
  if ! apt-get install -y -qq --no-install-recommends --simulate "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  if ! install "${missing[@]}"; then
    apt-get update -qq
    install "${missing[@]}"
  fi
fi

for tool in swaks openssl python3 haproxy strace; do
  command -v "$tool" >/dev/null || { echo "$0: $tool missing after install" >&2; exit 1; }
done
perl -MNet::SSLeay -e 1 || { echo "$0: perl Net::SSLeay missing (swaks --tls)" >&2; exit 1; }
[ -x /usr/sbin/smtp-sink ] || { echo "$0: /usr/sbin/smtp-sink missing after installing postfix" >&2; exit 1; }
# Some tests run python3 from PATH (which may be a pyenv build that does not
# see Debian's python3-aiosmtpd): give that interpreter aiosmtpd from PyPI too.
if ! python3 -c 'import aiosmtpd.controller' 2>/dev/null; then
  python3 -m pip install --quiet --root-user-action=ignore aiosmtpd
fi
python3 -c 'import aiosmtpd.controller' && /usr/bin/python3 -c 'import aiosmtpd.controller' ||
  { echo "$0: python module aiosmtpd missing (python3-aiosmtpd / pip install aiosmtpd)" >&2; exit 1; }
# tests/admin.rs parses /metrics with the reference Prometheus text parser.
if ! python3 -c 'import prometheus_client.parser' 2>/dev/null; then
  python3 -m pip install --quiet --root-user-action=ignore prometheus-client
fi
# tests/kubernetes.rs runs python3 from PATH too: PyYAML for it as well.
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet --root-user-action=ignore pyyaml
fi
python3 -c 'import yaml' ||
  { echo "$0: python module yaml missing (pip install pyyaml)" >&2; exit 1; }
python3 -c 'import prometheus_client.parser' ||
  { echo "$0: python module prometheus_client missing (pip install prometheus-client)" >&2; exit 1; }
command -v chromium >/dev/null || { echo "$0: chromium missing after install" >&2; exit 1; }
# No system MTA may listen: nothing on port 25 (0019 in /proc/net/tcp*, state 0A).
if awk '$2 ~ /:0019$/ && $4 == "0A" {found=1} END {exit !found}' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
  echo "$0: something listens on port 25; a system MTA must not run (postfix stop?)" >&2; exit 1
fi

# Exim's binary under /opt/exim (unpacked, not installed: no daemon, no MTA
# conflict). The script is itself idempotent.
"$here/../tests/peers/exim/install.sh"
