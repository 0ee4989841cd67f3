"""``balance-api burst``: fire N balance changes for one user at once, then prove the outcome.

Default mode opens one connection per request, waits until all N are connected, then writes all N
requests in one pass of the event loop, so they are truly simultaneous. ``--connections C`` instead
sends the N requests over C keep-alive connections, one in flight per connection. ``--url`` given
several times spreads the connections over those service instances in turn (as a load balancer in
front of several machines would); set-up and read-back go to the first.

Unless ``--no-verify`` is given it first brings the user to ``--start-balance`` through the public
API, and afterwards checks that
  1. successes == min(N, floor(start / |amount|)) for a debit (N for a credit);
  2. every other request was refused with 409 ``insufficient_funds`` (no 5xx, timeout or reset);
  3. the balances returned by the successes are exactly start+amount, start+2*amount, ... each once,
     i.e. the changes were applied one at a time in some order, none lost or doubled;
  4. the balance read back at the end equals start + amount * successes.
It exits 1 when a check fails. ``--no-verify`` only measures (e.g. against a no-op server).

The client is a bare asyncio protocol with httptools' C response parser, so that its own cost per
request (printed as "client CPU per request") stays far below the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import httptools
import uvloop
from hdrh.histogram import HdrHistogram

from server.running.process_limits import raise_open_file_limit


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 client connection with at most one request in flight."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._lost: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self.answered_at = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed before the response")
        self._fail(self._lost)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.answered_at = time.perf_counter()
        body, self._body = b"".join(self._body), []
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, error: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Write ``request`` (raw HTTP/1.1 bytes); the future resolves to ``(status, body)``."""
        self._waiter = asyncio.get_running_loop().create_future()
        if self._lost is not None or self.transport is None:
            self._waiter.set_exception(self._lost or ConnectionError("not connected"))
        else:
            self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_request(method: str, host: str, path: str, body: bytes = b"", keep_alive: bool = False,
                 token: str | None = None) -> bytes:
    """Raw HTTP/1.1 request bytes with a JSON body (``Content-Type: application/json``), and
    ``Authorization: Bearer token`` when a ``token`` (an API key or token) is given."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{authorization}"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Outcome:
    """What one request got: an HTTP status and problem code, or a transport error."""

    label: str  # "200", "409 insufficient_funds", "timeout", "error: ConnectionResetError"...
    latency_s: float | None = None
    balance: int | None = None


def classify(status: int, body: bytes, latency_s: float) -> Outcome:
    """Turn a response into an :class:`Outcome`; a 200 carries its returned balance."""
    try:
        document = json.loads(body)
    except ValueError:
        document = {}
    if status == 200:
        return Outcome("200", latency_s, document.get("balance"))
    code = document.get("code") if isinstance(document, dict) else None
    return Outcome(f"{status} {code}" if code else str(status), latency_s)


@dataclass
class BurstConfig:
    """One burst: its targets (``urls``, base URLs of service instances sharing one database), the
    user and signed ``amount`` (minor units) of each of the ``requests`` changes, and how they go."""

    urls: tuple[str, ...] = ("http://127.0.0.1:8080",)
    user_id: int = 1
    requests: int = 10_000
    amount: int = -2
    start_balance: int = 10_000
    connections: int = 0  # 0: one connection per request
    connect_concurrency: int = 1_000
    timeout_s: float = 60.0
    verify: bool = True
    token: str | None = None  # API key or token sent with every request

    def host(self, index: int = 0) -> str:
        """The Host header for connection ``index`` (its target is ``urls[index % len(urls)]``)."""
        return urlsplit(self.urls[index % len(self.urls)]).netloc

    def address(self, index: int = 0) -> tuple[str, int]:
        parts = urlsplit(self.urls[index % len(self.urls)])
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class BurstReport:
    """Figures and checks of one burst; ``ok`` is True when every check passed."""

    config: dict
    counts: dict[str, int]
    connect_s: float
    fire_s: float
    requests_per_s: float
    latency_ms: dict[str, float]
    client_cpu_us_per_request: float
    final_balance: int | None = None
    checks: list[dict] = field(default_factory=list)
    returned_balances: list[int] = field(default_factory=list)  # of the 200s, ascending

    @property
    def ok(self) -> bool:
        return all(check["passed"] for check in self.checks)

    @property
    def successes(self) -> int:
        return self.counts.get("200", 0)


async def _connect(config: BurstConfig, index: int = 0) -> HttpConnection:
    loop = asyncio.get_running_loop()
    host, port = config.address(index)
    _, protocol = await loop.create_connection(HttpConnection, host, port)
    return protocol


async def _exchange(config: BurstConfig, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One request on a fresh connection, for setting up and reading back; returns ``(status, json)``."""
    connection = await _connect(config)
    try:
        raw = json.dumps(body).encode() if body is not None else b""
        status, answer = await asyncio.wait_for(
            connection.send(http_request(method, config.host(), path, raw, token=config.token)), config.timeout_s
        )
        return status, json.loads(answer) if answer else {}
    finally:
        connection.close()


async def read_balance(config: BurstConfig) -> int:
    """GET the user's balance through the API; raises RuntimeError unless 200."""
    status, document = await _exchange(config, "GET", f"/api/users/{config.user_id}")
    if status != 200:
        raise RuntimeError(f"GET /api/users/{config.user_id} answered {status}: {document}")
    return document["balance"]


async def set_balance(config: BurstConfig, target: int) -> None:
    """Bring the user to ``target`` with one PATCH of the difference (a ledger entry like any other)."""
    difference = target - await read_balance(config)
    if difference:
        status, document = await _exchange(
            config, "PATCH", "/api/balance", {"userId": config.user_id, "amount": difference}
        )
        if status != 200 or document.get("balance") != target:
            raise RuntimeError(f"could not set the starting balance: {status} {document}")


async def _fire_simultaneous(config: BurstConfig, requests: list[bytes]) -> tuple[list[Outcome], float, float, float]:
    """Connect N sockets, then write all N requests at once (``requests``: the request bytes for each
    target, by its index in ``config.urls``). Returns outcomes, connect s, fire s, CPU s."""
    gate = asyncio.Semaphore(config.connect_concurrency)

    async def connect_one(index: int) -> tuple[HttpConnection, bytes] | Outcome:
        async with gate:
            try:
                return await _connect(config, index), requests[index % len(requests)]
            except OSError as error:
                return Outcome(f"connect error: {type(error).__name__}")

    started = time.perf_counter()
    try:
        async with asyncio.timeout(config.timeout_s):
            connected = await asyncio.gather(*(connect_one(index) for index in range(config.requests)))
    except TimeoutError:
        raise RuntimeError(f"could not open {config.requests} connections in {config.timeout_s} s") from None
    connect_s = time.perf_counter() - started
    connections = [item[0] for item in connected if isinstance(item, tuple)]
    outcomes = [item for item in connected if isinstance(item, Outcome)]

    cpu_before = _cpu_seconds()
    fired_at = time.perf_counter()
    waiters = [connection.send(request) for connection, request in
               (item for item in connected if isinstance(item, tuple))]
    done, pending = await asyncio.wait(waiters, timeout=config.timeout_s)
    for connection, waiter in zip(connections, waiters):
        if waiter in pending:
            waiter.cancel()
            outcomes.append(Outcome("timeout"))
        elif waiter.exception() is not None:
            outcomes.append(Outcome(f"error: {type(waiter.exception()).__name__}"))
        else:
            status, body = waiter.result()
            outcomes.append(classify(status, body, connection.answered_at - fired_at))
        connection.close()
    fire_s = max((o.latency_s for o in outcomes if o.latency_s is not None), default=0.0)
    return outcomes, connect_s, fire_s, _cpu_seconds() - cpu_before


async def _fire_keep_alive(config: BurstConfig, requests: list[bytes]) -> tuple[list[Outcome], float, float, float]:
    """Send N requests over C keep-alive connections, one in flight each. Same arguments and return
    as above."""
    started = time.perf_counter()
    connections = await asyncio.gather(*(_connect(config, index) for index in range(config.connections)))
    connect_s = time.perf_counter() - started
    tickets = iter(range(config.requests))
    outcomes: list[Outcome] = []

    async def worker(connection: HttpConnection, request: bytes) -> None:
        for _ in tickets:  # shared iterator: exactly N requests in all
            sent_at = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(connection.send(request), config.timeout_s)
            except TimeoutError:
                outcomes.append(Outcome("timeout"))
                return
            except Exception as error:  # transport failure: this connection is done
                outcomes.append(Outcome(f"error: {type(error).__name__}"))
                return
            outcomes.append(classify(status, body, connection.answered_at - sent_at))

    cpu_before = _cpu_seconds()
    fired_at = time.perf_counter()
    await asyncio.gather(*(worker(connection, requests[index % len(requests)])
                           for index, connection in enumerate(connections)))
    fire_s = time.perf_counter() - fired_at
    for connection in connections:
        connection.close()
    unsent = config.requests - len(outcomes)
    outcomes.extend(Outcome("not sent (its connection failed)") for _ in range(unsent))
    return outcomes, connect_s, fire_s, _cpu_seconds() - cpu_before


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _latency_ms(outcomes: list[Outcome]) -> dict[str, float]:
    histogram = HdrHistogram(1, 3_600_000_000, 3)  # microseconds, 3 significant digits
    for outcome in outcomes:
        if outcome.latency_s is not None:
            histogram.record_value(max(1, round(outcome.latency_s * 1e6)))
    if histogram.get_total_count() == 0:
        return {}
    figures = {f"p{p}": histogram.get_value_at_percentile(p) / 1000 for p in (50, 90, 99)}
    figures["max"] = histogram.get_max_value() / 1000
    return figures


def _checks(config: BurstConfig, outcomes: list[Outcome], counts: Counter, final_balance: int) -> list[dict]:
    start, amount, n = config.start_balance, config.amount, config.requests
    expected = n if amount > 0 else min(n, start // -amount)
    successes = counts.get("200", 0)
    refusals = counts.get("409 insufficient_funds", 0)
    returned = sorted(o.balance for o in outcomes if o.label == "200")
    chain = sorted(start + amount * k for k in range(1, successes + 1))

    def check(name: str, passed: bool, detail: str) -> dict:
        return {"check": name, "passed": passed, "detail": detail}

    return [
        check("successes", successes == expected,
              f"{successes} succeeded; expected min(N, floor(start/|amount|)) = {expected}"),
        check("refusals", refusals == n - expected and successes + refusals == n,
              f"{refusals} got insufficient_funds; expected {n - expected}, and nothing else"),
        check("balance chain", returned == chain,
              f"returned balances {'are' if returned == chain else 'are NOT'} exactly "
              f"{start + amount}, {start + 2 * amount}, ..., {start + amount * successes}, each once"),
        check("final balance", final_balance == start + amount * successes,
              f"read back {final_balance}; expected start + amount * successes = {start + amount * successes}"),
    ]


async def run_burst(config: BurstConfig) -> BurstReport:
    """Set up, fire and (unless ``config.verify`` is False) check one burst; see the module doc."""
    if config.verify:
        await set_balance(config, config.start_balance)
    body = json.dumps({"userId": config.user_id, "amount": config.amount}).encode()
    fire = _fire_keep_alive if config.connections else _fire_simultaneous
    requests = [http_request("PATCH", config.host(index), "/api/balance", body, keep_alive=bool(config.connections),
                             token=config.token)
                for index in range(len(config.urls))]
    outcomes, connect_s, fire_s, cpu_s = await fire(config, requests)
    counts = Counter(outcome.label for outcome in outcomes)
    report = BurstReport(
        config={**asdict(config), "token": "(set)" if config.token else None},  # never the key itself
        counts=dict(counts.most_common()),
        connect_s=connect_s,
        fire_s=fire_s,
        requests_per_s=config.requests / fire_s if fire_s else 0.0,
        latency_ms=_latency_ms(outcomes),
        client_cpu_us_per_request=cpu_s / config.requests * 1e6,
        returned_balances=sorted(outcome.balance for outcome in outcomes if outcome.balance is not None),
    )
    if config.verify:
        report.final_balance = await read_balance(config)
        report.checks = _checks(config, outcomes, counts, report.final_balance)
    return report


def format_report(report: BurstReport) -> str:
    """Human-readable summary of a :class:`BurstReport`."""
    config = report.config
    mode = (f"over {config['connections']} keep-alive connections" if config["connections"]
            else "one connection per request, all written at once")
    latency = "  ".join(f"{name} {value:,.1f} ms" for name, value in report.latency_ms.items())
    lines = [
        f"burst: {config['requests']} x PATCH /api/balance "
        f"{{\"userId\": {config['user_id']}, \"amount\": {config['amount']}}}, {mode}",
        f"  target{'s' if len(config['urls']) > 1 else ' '}             {', '.join(config['urls'])}",
    ]
    if config["verify"]:
        lines.append(f"  start balance       {config['start_balance']} (set through the API)")
    lines += [
        f"  connect             {report.connect_s:.3f} s",
        f"  fire -> last answer {report.fire_s:.3f} s  ({report.requests_per_s:,.0f} requests/s)",
        f"  latency             {latency}",
        f"  client CPU          {report.client_cpu_us_per_request:.1f} us per request",
        "outcomes",
        *(f"  {label:<32}{count:>7}" for label, count in report.counts.items()),
    ]
    if report.checks:
        lines.append("checks")
        lines += [f"  {'PASS' if c['passed'] else 'FAIL'} {c['check']}: {c['detail']}" for c in report.checks]
        lines.append("RESULT: " + ("all checks passed" if report.ok else "FAILED"))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[BurstConfig, str | None]:
    parser = argparse.ArgumentParser(prog="balance-api burst", description=__doc__.split("\n\n")[0])
    defaults = BurstConfig()
    parser.add_argument("--url", action="append", dest="urls", metavar="URL",
                        help=f"service base URL; several: connections go to each in turn (default: {defaults.urls[0]})")
    parser.add_argument("--user-id", type=int, default=defaults.user_id)
    parser.add_argument("--requests", "-n", type=int, default=defaults.requests, help="N (default: %(default)s)")
    parser.add_argument("--amount", type=int, default=defaults.amount, help="signed minor units (default: %(default)s)")
    parser.add_argument("--start-balance", type=int, default=defaults.start_balance)
    parser.add_argument("--connections", "-c", type=int, default=0,
                        help="keep-alive connections to share the N requests (default: one per request)")
    parser.add_argument("--connect-concurrency", type=int, default=defaults.connect_concurrency,
                        help="connections being opened at once while connecting (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per phase")
    parser.add_argument("--no-verify", action="store_true", help="only measure: no set-up, no checks")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--token", default=os.environ.get("API_TOKEN"),
                        help="API key or token to send (default: $API_TOKEN)")
    args = parser.parse_args(argv)
    if args.amount == 0 or args.requests < 1 or args.connections < 0 or args.start_balance < 0:
        parser.error("--amount must be non-zero, --requests >= 1, --connections >= 0, --start-balance >= 0")
    config = BurstConfig(
        urls=tuple(url.rstrip("/") for url in args.urls or defaults.urls), user_id=args.user_id, requests=args.requests, amount=args.amount,
        start_balance=args.start_balance, connections=args.connections,
        connect_concurrency=args.connect_concurrency, timeout_s=args.timeout, verify=not args.no_verify,
        token=args.token,
    )
    return config, args.json


def main(argv: list[str] | None = None) -> int:
    """Run ``balance-api burst``; exit 0 when every check passed, 1 otherwise."""
    config, json_path = parse_args(sys.argv[1:] if argv is None else argv)
    raise_open_file_limit()
    try:
        report = uvloop.run(run_burst(config))
    except (OSError, RuntimeError) as error:
        print(f"burst: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    if json_path:
        with open(json_path, "w") as out:
            json.dump({**asdict(report), "ok": report.ok}, out, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
