#!/usr/bin/env python3
"""A real third-party upstream for tests/real_upstreams.rs: Python's aiosmtpd
(its Controller, STARTTLS through `tls_context`, STARTTLS required before
MAIL) on a loopback address, writing every message it accepts to DIR:

    DIR/<n>.eml   the message bytes as received (envelope.original_content:
                  dot-unstuffed, line ends untouched)
    DIR/<n>.json  the envelope: mail_from, mail_options, rcpt_tos,
                  rcpt_options, and the TLS session (version, cipher), or
                  null for a plaintext session

The .json is written (atomically, by rename) after the .eml, so a reader
that sees it sees the whole message.

    upstream.py --listen 127.0.0.1:PORT --dir DIR --cert PEM --key PEM
                [--max-seconds 300]

Prints "READY <port>" on stdout once it accepts connections. Stops on
SIGTERM / SIGINT, when stdin closes (the test that started it is gone), or
after --max-seconds, whichever comes first. Loopback addresses only.
"""

import argparse
import ipaddress
import json
import os
import signal
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, directory):
        self.directory = directory
        self.lock = threading.Lock()
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        tls = None
        if session.ssl:
            obj = session.ssl.get("ssl_object")
            cipher = session.ssl.get("cipher")
            tls = {
                "version": obj.version() if obj is not None else None,
                "cipher": cipher[0] if cipher else None,
            }
        record = {
            "mail_from": envelope.mail_from,
            "mail_options": list(envelope.mail_options),
            "rcpt_tos": list(envelope.rcpt_tos),
            "rcpt_options": [list(o) for o in envelope.rcpt_options],
            "tls": tls,
            "helo": session.host_name,
        }
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.directory, "%04d" % n)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json.tmp", "w") as f:
            json.dump(record, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Ok: queued as aiosmtpd-%d" % n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True, help="127.0.0.1:PORT or [::1]:PORT")
    p.add_argument("--dir", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--max-seconds", type=float, default=300)
    a = p.parse_args()

    host, _, port = a.listen.rpartition(":")
    host = host.strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit("upstream.py: only loopback addresses")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(a.cert, a.key)

    controller = Controller(
        Recorder(a.dir),
        hostname=host,
        port=int(port),
        server_hostname="aiosmtpd.test",
        tls_context=context,
        require_starttls=True,
        ready_timeout=10,
    )
    controller.start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin():
        try:
            sys.stdin.buffer.read()
        except Exception:
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("READY %s" % port, flush=True)
    deadline = time.monotonic() + a.max_seconds
    while not done.is_set() and time.monotonic() < deadline:
        done.wait(0.2)
    controller.stop()


if __name__ == "__main__":
    main()
