"""A small HTTP proxy in front of moto that behaves like AWS under load: it answers
ThrottlingException above a set rate per API, and AccessDeniedException for denied APIs.

Run as its own process (tests and benchmarks/provision.py do):
    python tests/throttle_proxy.py --target http://127.0.0.1:5000 --port 5001 --rate 5
        [--rate-for 'POST /keys-and-certificate=10'] [--deny 'POST /things']
(an API is the method and the resource parts of the path: 'PUT /things/principals')
GET /_proxy/stats returns the counts per API as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict

from aiohttp import ClientSession, web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def api_key(method: str, path: str) -> str:
    """IoT's REST paths alternate resource and name (/things/NAME/principals): the method and
    the resource parts identify the API, e.g. 'PUT /things/principals' is AttachThingPrincipal."""
    parts = path.strip("/").split("/")
    return f"{method} /" + "/".join(parts[0::2])


class Bucket:
    """Token bucket: `rate` per second with a burst of `burst` (AWS allows short bursts)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def build_app(
    target: str, default_rate: float, rates: dict[str, float], deny: set[str], burst: float
) -> web.Application:
    buckets: dict[str, Bucket] = {}
    stats: dict[str, dict[str, int]] = defaultdict(
        lambda: {"passed": 0, "throttled": 0, "denied": 0}
    )
    session: dict[str, ClientSession] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/_proxy/stats":
            return web.json_response(stats)
        key = api_key(request.method, request.path)
        if key in deny:
            stats[key]["denied"] += 1
            return _error(
                403,
                "AccessDeniedException",
                f"User is not authorized to perform this action ({key})",
            )
        rate = rates.get(key, default_rate)
        bucket = buckets.setdefault(key, Bucket(rate, max(1.0, rate * burst)))
        if rate > 0 and not bucket.take():
            stats[key]["throttled"] += 1
            return _error(400, "ThrottlingException", "Rate exceeded")
        stats[key]["passed"] += 1
        if "client" not in session:
            session["client"] = ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with session["client"].request(
            request.method, target + request.path_qs, headers=headers, data=await request.read()
        ) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=upstream.status, body=body, headers=out)

    async def close(app: web.Application) -> None:
        if "client" in session:
            await session["client"].close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(close)
    return app


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}),
        headers={"x-amzn-ErrorType": code, "Content-Type": "application/json"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s per API; 0 = no limit")
    parser.add_argument("--burst", type=float, default=0.2, help="burst, in seconds of rate")
    parser.add_argument("--rate-for", action="append", default=[], help="'METHOD /path=RATE'")
    parser.add_argument("--deny", action="append", default=[], help="'METHOD /path'")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop by itself after this")
    args = parser.parse_args()
    rates = {k: float(v) for k, v in (item.rsplit("=", 1) for item in args.rate_for)}
    app = build_app(args.target, args.rate, rates, set(args.deny), args.burst)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        try:
            await asyncio.sleep(args.max_seconds)
        finally:
            await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
