#!/usr/bin/env bash
# The test suite, as the README runs it: installs the real SMTP peers the
# tests drive (swaks, openssl, Exim's binary), then runs every test.
# Needs root or sudo for the installs (Debian/Ubuntu, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --locked "$@"
