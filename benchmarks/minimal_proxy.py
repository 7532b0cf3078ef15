"""The peer floor for a Python proxy: a minimal aiohttp pass-through (no routing, no metrics).

    python minimal_proxy.py (--port N | --socket PATH) (--upstream-url URL | --upstream-socket PATH)

Keep-alive pool to one upstream, body copied as it arrives, nothing parsed.
It is what PEERS.md calls "a minimal aiohttp pass-through proxy", rebuilt
here so the benchmark measures it in the same run as soulstone's gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def main() -> None:
    parser = argparse.ArgumentParser()
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--socket")
    upstream = parser.add_mutually_exclusive_group(required=True)
    upstream.add_argument("--upstream-url")
    upstream.add_argument("--upstream-socket")
    args = parser.parse_args()

    async def start() -> None:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=args.upstream_socket, limit=0)
            if args.upstream_socket else aiohttp.TCPConnector(limit=0)
        )  # fmt: skip
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                        timeout=aiohttp.ClientTimeout(total=None))  # fmt: skip
        base = args.upstream_url or "http://localhost"

        async def proxy(request: web.Request) -> web.StreamResponse:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
            async with session.request(request.method, base + request.path_qs,
                                       data=request.content, headers=headers) as up:  # fmt: skip
                response = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP})  # fmt: skip
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        if args.socket:
            if os.path.exists(args.socket):
                os.unlink(args.socket)
            site: web.BaseSite = web.UnixSite(runner, args.socket)
        else:
            site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print("minimal_proxy: listening", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(start())
    except ImportError:
        asyncio.run(start())


if __name__ == "__main__":
    main()
