#!/usr/bin/env python3
"""Tiny SMTP sink for checking send.sh: STARTTLS, PIPELINING, CHUNKING, 8BITMIME.

usage: testserver.py PORT CERT KEY OUTDIR
Every message is written to OUTDIR/msgN.eml (exact bytes, after DATA
dot-unstuffing or BDAT reassembly) and OUTDIR/msgN.json (envelope, tls,
DATA/BDAT, chunk sizes). OUTDIR/transcript.log has every raw TCP read
(so pipelined commands show up as one read) and every reply.
REJECT_RCPT=1 in the environment makes every RCPT fail with 550;
NO_CHUNKING=1 stops advertising CHUNKING (exim then uses DATA).
Loopback only; stops on SIGTERM.
"""
import asyncio, json, os, ssl, sys

PORT, CERT, KEY, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
REJECT = os.environ.get("REJECT_RCPT") == "1"  # answer every RCPT with 550
CHUNKING = [] if os.environ.get("NO_CHUNKING") == "1" else ["CHUNKING"]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
count = 0
tlog = open(f"{OUT}/transcript.log", "a", buffering=1)


async def handle(reader, writer):
    global count
    buf = bytearray()
    tls = False

    async def fill():
        d = await reader.read(65536)
        if not d:
            raise ConnectionError("eof")
        tlog.write(f"C: read {len(d)} bytes{' (tls)' if tls else ''}: {bytes(d)!r}\n")
        buf.extend(d)

    async def rawline():
        while b"\r\n" not in buf:
            await fill()
        i = buf.index(b"\r\n")
        ln = bytes(buf[:i]); del buf[:i + 2]
        return ln

    async def reply(s):
        tlog.write(f"S: {s!r}\n")
        writer.write(s.encode() + b"\r\n")
        await writer.drain()

    def reset():
        return {"mail_from": None, "rcpt_to": [], "tls": tls, "method": None, "chunks": [], "body": bytearray()}

    async def deliver(t):
        global count
        count += 1
        body = bytes(t.pop("body"))
        open(f"{OUT}/msg{count}.eml", "wb").write(body)
        json.dump(t, open(f"{OUT}/msg{count}.json", "w"))
        await reply(f"250 2.0.0 Ok: queued as msg{count}")

    t = reset()
    try:
        await reply("220 localhost ESMTP testserver")
        while True:
            cmd = (await rawline()).decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                ext = ["PIPELINING", *CHUNKING, "8BITMIME", "SIZE 10485760"] + ([] if tls else ["STARTTLS"])
                lines = ["localhost"] + ext
                for i, l in enumerate(lines):
                    await reply(f"250{'-' if i < len(lines) - 1 else ' '}{l}")
                t = reset()
            elif verb == "STARTTLS" and not tls:
                if buf:
                    tlog.write("!! data pipelined after STARTTLS\n")
                await reply("220 2.0.0 Ready to start TLS")
                await writer.start_tls(ctx)
                tls = True; buf.clear(); t = reset()
            elif verb == "MAIL":
                t = reset(); t["mail_from"] = cmd[5:]; await reply("250 2.1.0 Ok")
            elif verb == "RCPT" and REJECT:
                await reply("550 5.1.1 rejected by testserver")
            elif verb == "RCPT":
                t["rcpt_to"].append(cmd[5:]); await reply("250 2.1.5 Ok")
            elif verb == "DATA":
                t["method"] = "DATA"
                await reply("354 End data with <CR><LF>.<CR><LF>")
                while (l := await rawline()) != b".":
                    t["body"] += (l[1:] if l.startswith(b".") else l) + b"\r\n"  # dot-unstuff
                if t["rcpt_to"]:
                    await deliver(t)
                else:
                    await reply("554 5.5.1 No valid recipients")
                t = reset()
            elif verb == "BDAT":
                parts = cmd.split()
                n, last = int(parts[1]), len(parts) > 2 and parts[2].upper() == "LAST"
                while len(buf) < n:
                    await fill()
                t["method"] = "BDAT"; t["chunks"].append([n, last])
                t["body"] += buf[:n]; del buf[:n]
                if last and not t["rcpt_to"]:
                    await reply("554 5.5.1 No valid recipients"); t = reset()
                elif last:
                    await deliver(t); t = reset()
                else:
                    await reply(f"250 2.0.0 {n} octets received")
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET": t = reset()
                await reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 Bye"); break
            else:
                await reply("502 5.5.2 Command not recognized")
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as e:
        tlog.write(f"!! connection ended: {e!r}\n")
    finally:
        writer.close()


async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", PORT)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
