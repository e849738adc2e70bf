"""Run a fast webhook receiver on 127.0.0.1 that answers 200 and records each arrival.

Started by benchmarks.throughput in its own process. Every request outside `/_*` is answered
`200 ok` and recorded as (webhook-id header, time.time() at receipt). Control endpoints:

  GET  /_count    {"count": n}
  GET  /_summary  {"count", "unique", "first", "last", "bytes"} (cheap for a million receipts)
  GET  /_stats    {"ids": [...], "times": [...], "bytes": n}
  POST /_reset    forget everything recorded so far

    python -m benchmarks.receiver --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

HOST = "127.0.0.1"


@dataclass
class Arrivals:
    """What arrived, in arrival order."""

    ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    body_bytes: int = 0

    def summary(self) -> dict[str, object]:
        return {
            "count": len(self.times),
            "unique": len(set(self.ids)),
            "first": self.times[0] if self.times else None,
            "last": self.times[-1] if self.times else None,
            "bytes": self.body_bytes,
        }


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


async def serve(port_file: Path) -> None:
    """Serve until SIGTERM or SIGINT; write the bound port to port_file once listening."""
    arrivals = Arrivals()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/_"):
            arrivals.times.append(time.time())
            arrivals.ids.append(request.headers.get("webhook-id", ""))
            arrivals.body_bytes += request.content_length or 0
            # The body is left unread: aiohttp discards it before reusing the connection.
            return web.Response(body=b"ok")
        if path == "/_count":
            return _json({"count": len(arrivals.times)})
        if path == "/_summary":
            return _json(arrivals.summary())
        if path == "/_stats":
            return _json(
                {"ids": arrivals.ids, "times": arrivals.times, "bytes": arrivals.body_bytes}
            )
        if path == "/_reset" and request.method == "POST":
            arrivals.ids, arrivals.times, arrivals.body_bytes = [], [], 0
            return _json({"count": 0})
        return web.Response(status=404)

    # The low-level server skips routing and middlewares: the cheapest aiohttp server there is.
    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)  # atomic: the parent never reads a half-written port

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port_file))


if __name__ == "__main__":
    main()
