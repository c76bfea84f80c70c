#!/usr/bin/env bash
# Install Exim's binary (from Debian's exim4-daemon-light) under /opt/exim
# WITHOUT dpkg -i: exim4-daemon-light conflicts with Debian's postfix (both
# are a mail-transport-agent), and postfix's smtp-sink is needed elsewhere.
# Only the .deb is unpacked; its shared libraries are ordinary packages
# installed with apt-get. No daemon is started, nothing binds port 25.
# Idempotent; run as root on Debian bookworm. Prints `exim4 -bV`'s version.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PREFIX=/opt/exim
EXIM="$PREFIX/usr/sbin/exim4"

# Debian's build has Debian-exim as its compiled-in exim_user (looked up at
# run time; exim refuses to start without it) and delivers as that user.
getent group Debian-exim >/dev/null || groupadd --system Debian-exim
getent passwd Debian-exim >/dev/null ||
  useradd --system -g Debian-exim -d /nonexistent -s /usr/sbin/nologin Debian-exim

# -C /dev/null: -bV needs a config; the real one is private to send.sh.
if ! "$EXIM" -C /dev/null -bV >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  # Belt and braces: no maintainer script may start a daemon meanwhile.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -rf "$tmp" /usr/sbin/policy-rc.d' EXIT
  else
    trap 'rm -rf "$tmp"' EXIT
  fi
  apt-get update -qq
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -q exim4-daemon-light >/dev/null)
  deb=$(ls "$tmp"/exim4-daemon-light_*.deb)
  # The .deb's Depends (libraries), minus exim4-base and debconf: exim4-base
  # pulls exim4-config / a daemon, which is exactly what must not happen.
  libs=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/ //g' |
         grep -v -e '^exim4' -e '^debconf' -e '^$')
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $libs >/dev/null
  mkdir -p "$PREFIX"
  dpkg-deb -x "$deb" "$PREFIX"          # keeps exim4 setuid root, as Debian ships it
  if ldd "$EXIM" | grep 'not found' >&2; then
    echo "install.sh: exim4 has missing shared libraries" >&2; exit 1
  fi
fi

"$EXIM" -C /dev/null -bV 2>/dev/null | grep '^Exim version'
