"""A server that answers the balance API's routes without doing any work: the ceiling.

Same stack and settings as the service (aiohttp on uvloop, same listen backlog, no access log), so
``balance-api burst --no-verify`` against it measures HTTP and the load client alone.

    python -m loadtest.noop_server --port 8090
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from server.running.config import Settings
from server.running.process_limits import raise_open_file_limit

_BALANCE = b'{"userId": 1, "balance": 10000}'
_TRANSFER = b'{"transferId": 1, "fromAccountId": 2, "toAccountId": 3, "amount": 1, "status": "pending"}'


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_BALANCE, content_type="application/json")


async def _made(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=201, body=_TRANSFER, content_type="application/json")


def create_noop_app() -> web.Application:
    """An app with the service's routes, each answering a fixed 200 JSON body."""
    app = web.Application()
    app.router.add_patch("/api/balance", _answer)
    app.router.add_get("/api/users/{user_id}", _answer)
    app.router.add_post("/api/users/{user_id}/credit", _answer)
    app.router.add_post("/api/transfers", _made)
    app.router.add_post("/api/transfers/batch", _answer)
    app.router.add_post("/api/transfers/{transfer_id}/post", _answer)
    app.router.add_get("/api/health", _answer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (several processes)")
    args = parser.parse_args(argv)
    raise_open_file_limit()
    web.run_app(
        create_noop_app(), host=args.host, port=args.port, backlog=Settings().listen_backlog,
        access_log=None, loop=uvloop.new_event_loop(), print=None, reuse_port=args.reuse_port or None,
    )


if __name__ == "__main__":
    main()
