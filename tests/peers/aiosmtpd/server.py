#!/usr/bin/env python3
"""aiosmtpd as a real upstream for the outbound client's tests.

usage: server.py CERT KEY OUTDIR
Listens on 127.0.0.1 (a free port), offers STARTTLS and requires it, prints
"PORT <n>" once listening. Every message goes to OUTDIR/msgN.eml (the exact
content after dot-unstuffing: aiosmtpd's original_content) and
OUTDIR/msgN.json (MAIL FROM, RCPT TO, whether TLS was on). Stops on SIGTERM
or when stdin closes. Needs aiosmtpd (pip install aiosmtpd, or Debian's
python3-aiosmtpd).
"""
import asyncio, json, ssl, sys

from aiosmtpd.smtp import SMTP

CERT, KEY, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
count = 0


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        with open(f"{OUT}/msg{count}.eml", "wb") as f:
            f.write(envelope.original_content)
        with open(f"{OUT}/msg{count}.json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_to": envelope.rcpt_tos,
                       "tls": session.ssl is not None}, f)
        return "250 2.0.0 stored"


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), tls_context=ctx, require_starttls=True, decode_data=False,
                     hostname="aiosmtpd.test"),
        "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    # Run until our parent closes stdin (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
