"""POST daemon-shaped webhook bodies with a bare aiohttp client: the ceiling, with no database.

Started by benchmarks.throughput in its own process, so it is measured like the daemon is. One
ClientSession, TCPConnector(limit=concurrency) and `concurrency` workers, each sending the same
headers as the daemon (with a constant signature of the same length) and a body built by the
daemon's own build_body(). Prints one JSON line: requests, failures, elapsed_s, cpu_s.

    python -m benchmarks.bare_client --url URL --requests N --concurrency C --payload JSON
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import uvloop

from dispatcher.delivery.sender import USER_AGENT, build_body

# Same lengths as a real Standard Webhooks signature and secret.
_SIGNATURE = "v1," + base64.b64encode(bytes(32)).decode()
_SECRET = "whsec_" + base64.b64encode(bytes(32)).decode()
EVENT_TYPE = "bench.type_0"


async def run(
    url: str,
    requests: int,
    concurrency: int,
    payload: str,
    secret_header: bool,
    deadline_s: float,
) -> dict[str, float]:
    """Send `requests` POSTs with `concurrency` in flight; return counts and timings."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60
    )
    created_at = datetime.now(UTC)
    remaining = requests
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            message_id = f"00000000-0000-4000-8000-{remaining:012d}"
            body = build_body(message_id, EVENT_TYPE, created_at, payload)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": message_id,
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": _SIGNATURE,
            }
            if secret_header:
                headers["webhook-secret"] = _SECRET
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1

    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("Accept",),
    ) as session:
        cpu0, t0 = time.process_time(), time.monotonic()
        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"requests": requests, "failures": failures, "elapsed_s": elapsed, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--payload", required=True, help="the event payload as JSON text")
    parser.add_argument("--no-secret-header", action="store_true", help="as the daemon may")
    parser.add_argument("--deadline-s", type=float, default=600.0)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("--url must point at 127.0.0.1")
    result = uvloop.run(
        run(
            args.url,
            args.requests,
            args.concurrency,
            args.payload,
            not args.no_secret_header,
            args.deadline_s,
        )
    )
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
