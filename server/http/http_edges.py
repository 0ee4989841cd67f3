"""Answers aiohttp would otherwise give outside the problem middleware, as problem details.

- ``Expect``: aiohttp answers an expectation other than ``100-continue`` with a ``text/plain``
  417 that echoes the header, before any middleware runs (its ``_default_expect_handler``); every
  route here gets :func:`expect_handler` instead.
- Static files (the API reference's assets): aiohttp's ``FileResponse`` answers a missing file
  with an empty 404 of its own and a directory with 403; :func:`static_files` answers both 404
  ``route_not_found``.
- Transfer codings: aiohttp's parser reads ``Transfer-Encoding: gzip, chunked`` as chunked and
  hands the handler the still-encoded body; reading a body refuses it 501
  (:func:`server.http.request_bodies.read_json_body`; a route that reads no body ignores it).
- The HTTP parser's own errors (bad header bytes, Content-Length with chunked, over-long lines,
  invalid methods and versions) are answered by aiohttp's ``RequestHandler.handle_error`` before
  any middleware, as ``text/plain`` that echoes the request's bytes, with an ERROR traceback in the
  log. aiohttp offers no hook for them (aio-libs/aiohttp#3287, open), so :class:`ProblemAppRunner`
  serves the app with :class:`ProblemRequestHandler`, whose ``handle_error`` answers problem
  details and logs one INFO line.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, LineTooLong

from server.problems import (ExpectationFailed, Handler, MalformedHttpRequest, Problem, RouteNotFound,
                             UnsupportedTransferCoding, instance)

log = logging.getLogger(__name__)


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """A route's ``Expect`` handler (aiohttp's ``expect_handler``): ``100-continue`` is answered
    ``100 Continue`` on HTTP/1.1 (RFC 9110 §10.1.1), as aiohttp does; any other expectation is 417
    ``expectation_failed`` problem details, which closes nothing and echoes nothing."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue":
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started (as aiohttp does)
        return None
    return ExpectationFailed().response(instance(request))


def static_files(directory: Path) -> Handler:
    """A handler serving ``directory``'s files at ``{filename}``, registered before aiohttp's own
    static resource for the same prefix so that it answers first: a path that names no file there
    (missing, a directory, leaving the directory) is 404 ``route_not_found``; a file is aiohttp's
    ``FileResponse`` (conditional requests, ranges)."""
    root = directory.resolve()

    async def handler(request: web.Request) -> web.StreamResponse:
        wanted = (root / request.match_info["filename"]).resolve()
        if not wanted.is_relative_to(root) or not wanted.is_file():
            raise RouteNotFound("No file matches this path.")
        return web.FileResponse(wanted)

    return handler


def _parser_problem(error: BaseException | None) -> Problem:
    """The problem for an error of aiohttp's HTTP parser; its detail names the kind of error and
    never quotes the request (the parser's own message does)."""
    message = str(getattr(error, "message", "") or "")
    if "Transfer-Encoding" in message and "Content-Length" not in message:  # "Request has invalid `Transfer-Encoding`"
        return UnsupportedTransferCoding()
    if isinstance(error, LineTooLong):
        return MalformedHttpRequest("The request line or a header is longer than 8,190 bytes.")
    if isinstance(error, BadHttpMethod):
        return MalformedHttpRequest("The request method is not an HTTP token.")
    if isinstance(error, BadStatusLine):
        return MalformedHttpRequest("The request line is not METHOD SP target SP HTTP/1.1.")
    if "Content-Length" in message:
        return MalformedHttpRequest("Transfer-Encoding and Content-Length are both present (RFC 9112 §6.1).")
    return MalformedHttpRequest("The request's header section is not valid HTTP/1.1 (RFC 9112).")


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the HTTP layer's errors as problem details."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The answer to a request the app could not take: a parser error (``status`` 400, ``exc``
        aiohttp's ``HttpProcessingError``) is a client's mistake, one INFO line; anything else (500)
        escaped every middleware, so it is a bug: logged with its traceback. The connection closes."""
        if request.writer.output_size > 0:  # as aiohttp: a response has begun, nothing more can be sent
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status == 500:
            log.error("unhandled error on a request", exc_info=exc)
            problem = Problem("An unexpected error occurred.")
        else:
            problem = _parser_problem(exc)
            log.info("malformed HTTP request from %s answered %d %s: %s", request.remote, problem.status,
                     problem.code, type(exc).__name__)
        response = problem.response(instance(request))
        response.force_close()
        return response


class ProblemServer(web.Server):
    """aiohttp's low-level server making :class:`ProblemRequestHandler` connections."""

    def __call__(self) -> ProblemRequestHandler:
        return ProblemRequestHandler(self, loop=asyncio.get_running_loop(), **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`ProblemServer`; used as aiohttp's docs use a
    runner ("Application runners"): ``setup()``, a ``TCPSite``, ``cleanup()``."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return ProblemServer(made.request_handler, request_factory=made.request_factory,
                             handler_cancellation=made.handler_cancellation, **made._kwargs)
