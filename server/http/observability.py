"""One middleware per request for what operators see: a request id, a log line and metrics.

* Request id: ``X-Request-ID`` from the client when it is 1-128 visible ASCII characters, else a
  new one, 32 hex digits: a random 64-bit prefix drawn once per process, then a 64-bit counter
  (unique like a UUID4, without a system call per request: ``uuid4`` was 3% of a worker's CPU);
  bound to every log record made while the request runs and echoed in the response's ``X-Request-ID``.
* Log line: ``event="request"`` with ``method``, ``route`` (the route template, e.g.
  ``/api/users/{id}``), ``path``, ``status``, ``duration_ms`` and ``request_id``, at
  ``REQUEST_LOG_LEVEL``; nothing is formatted when that level is not enabled.
* Metrics: ``http_requests_total`` and ``http_request_duration_seconds`` by method, route and status.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

import structlog
from aiohttp import web

from server.http.app_keys import REQUEST_ID
from server.problems import Handler
from server.running import metrics

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Label values must be a bounded set: any other method a client invents is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

request_log = logging.getLogger("balance_api.request")


class _RequestIds:
    """New request ids: this process's random prefix and a counter, drawn again in a forked child
    (``os.register_at_fork``; checking ``os.getpid()`` per request is a system call)."""

    def __init__(self) -> None:
        self._draw()
        os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix, self._counter = os.urandom(8).hex(), itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()
_request_metrics = metrics.LabelledChildren(metrics.REQUESTS, metrics.REQUEST_DURATION)


def request_id_of(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when well-formed (1-128 characters 0x21-0x7E), else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return _request_ids.new()


def route_of(request: web.Request) -> str:
    """The matched route's template (``/api/users/{id}``), or ``"unmatched"``: a bounded label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observability_middleware(level: str) -> web.middleware:
    """The middleware, logging each request at ``level`` (a logging level name).

    It must be the outermost middleware, so that it sees the final status of every response,
    problem details included.
    """
    log_level = logging.getLevelName(level)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[REQUEST_ID] = request_id = request_id_of(request)
        structlog.contextvars.bind_contextvars(request_id=request_id)  # this request's task only
        response = await handler(request)
        duration = time.perf_counter() - started
        response.headers[REQUEST_ID_HEADER] = request_id
        method = request.method if request.method in _METHODS else "other"
        route, status = route_of(request), str(response.status)
        requests, durations = _request_metrics.of(method, route, status)
        requests.inc()
        durations.observe(duration)
        if request_log.isEnabledFor(log_level):
            request_log.log(log_level, "request", extra={
                "method": request.method, "route": route, "path": request.path, "status": response.status,
                "duration_ms": round(duration * 1000, 3),
            })
        return response

    return middleware
