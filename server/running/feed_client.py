"""``balance-api events --url URL [--after CURSOR] [--follow]``: the change feed as JSON lines.

A client of a running service (``GET /api/events``, docs/api.md "The change feed"): it prints each
event as one line of JSON, oldest first, for ``jq`` and shell pipelines. Without ``--follow`` it
stops at the end of the feed; with it, it long-polls (``wait=30``) for more until interrupted,
riding out a restart of the service. The last line's ``id`` is where to resume (``--after``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
import orjson

WAIT_SECONDS = 30


async def follow_feed(url: str, after: str | None, follow: bool, query: dict[str, str], token: str | None,
                      out=sys.stdout) -> int:
    """Print events after ``after`` (None: from the start) as JSON lines to ``out``; 0 at the end
    of the feed (never, when ``follow``), 1 on a refusal (its problem details on stderr)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=WAIT_SECONDS + 30)
    async with aiohttp.ClientSession(base_url=url.rstrip("/") + "/", headers=headers, timeout=timeout) as http:
        retry = 0.5
        while True:
            params = {**query, "limit": "1000", **({"after": after} if after else {}),
                      **({"wait": str(WAIT_SECONDS)} if follow else {})}
            try:
                async with http.get("api/events", params=params) as response:
                    body = await response.read()
                    if response.status != 200:
                        print(body.decode(errors="replace"), file=sys.stderr)
                        if response.status < 500 or not follow:
                            return 1
                        await asyncio.sleep(retry)
                        continue
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                if not follow:
                    print(f"balance-api events: {url}: {error!r}", file=sys.stderr)
                    return 1
                await asyncio.sleep(retry)  # the service restarting: try again from the same cursor
                retry = min(retry * 2, 10.0)
                continue
            retry = 0.5
            page = orjson.loads(body)
            for event in page["events"]:
                out.write(orjson.dumps(event).decode() + "\n")
            out.flush()
            if not page["events"] and not follow:
                return 0
            after = page["nextCursor"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="balance-api events", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://localhost:8080")
    parser.add_argument("--after", help="an event's id or nextCursor: print what comes after it")
    parser.add_argument("--follow", action="store_true", help="wait for more events instead of stopping")
    parser.add_argument("--types", help="comma-separated event types")
    parser.add_argument("--asset", help="only events of this asset")
    parser.add_argument("--account-id", help="only events of this account")
    parser.add_argument("--token", default=os.environ.get("API_TOKEN"), help="bearer token (default: $API_TOKEN)")
    args = parser.parse_args(argv)
    query = {name: value for name, value in (("types", args.types), ("asset", args.asset),
                                             ("accountId", args.account_id)) if value}
    try:
        return asyncio.run(follow_feed(args.url, args.after, args.follow, query, args.token))
    except KeyboardInterrupt:
        return 0
