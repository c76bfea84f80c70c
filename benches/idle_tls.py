#!/usr/bin/env python3
"""Idle TLS sessions: opens COUNT sessions to a running relay (EHLO, STARTTLS,
the TLS handshake, EHLO again), holds them all open and idle, then reads the
relay's memory and counts refusals. For the target "10,000 idle TLS sessions
in at most 300 MB RSS, none refused below max_connections".

    benches/idle_tls.py HOST:PORT RELAY_PID [COUNT] [PARALLEL]

COUNT (10000) sessions, at most PARALLEL (200) handshakes at a time. Bounded:
the whole run stops after 300 s; every session is closed at the end. Only
for loopback targets. The relay needs `max_connections` and
`max_connections_per_ip` above COUNT (both default lower).
"""

import asyncio
import ipaddress
import ssl
import sys
import time

DEADLINE = 300


def memory(pid):
    """(RSS, PSS) of the relay in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


async def reply(reader):
    """One SMTP reply, multi-line included; its last line."""
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def open_session(host, port, ctx):
    reader, writer = await asyncio.open_connection(host, port)
    banner = await reply(reader)
    if not banner.startswith(b"220"):
        writer.close()
        return None, banner
    writer.write(b"EHLO idle.test\r\n")
    await reply(reader)
    writer.write(b"STARTTLS\r\n")
    go = await reply(reader)
    if not go.startswith(b"220"):
        writer.close()
        return None, go
    await writer.start_tls(ctx, server_hostname="localhost")
    writer.write(b"EHLO idle.test\r\n")
    hello = await reply(reader)
    if not hello.startswith(b"250"):
        writer.close()
        return None, hello
    return writer, None


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit("loopback targets only")
    pid = int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    before = memory(pid)
    gate = asyncio.Semaphore(parallel)
    writers, refusals, errors = [], {}, {}

    async def one():
        async with gate:
            try:
                w, refused = await open_session(host, int(port), ctx)
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            if w is None:
                key = refused[:40].decode("latin-1").strip()
                refusals[key] = refusals.get(key, 0) + 1
            else:
                writers.append(w)

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    opened = time.monotonic() - start
    await asyncio.sleep(2)
    held = memory(pid)
    print(f"sessions: {len(writers)} open of {count} in {opened:.1f} s; refused {refusals}; errors {errors}")
    print(f"relay memory before: RSS {before[0] / 1024:.1f} MiB, PSS {before[1] / 1024:.1f} MiB")
    print(f"relay memory with {len(writers)} idle TLS sessions: RSS {held[0] / 1024:.1f} MiB, "
          f"PSS {held[1] / 1024:.1f} MiB ({(held[0] - before[0]) / max(len(writers), 1):.1f} KiB RSS per session)")
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), DEADLINE))
